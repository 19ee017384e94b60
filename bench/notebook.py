"""`mlops_nb.run` from a Jupyter kernel against `mlops-nb run` from a terminal, on the same small notebook, in the same run.

A real kernel (jupyter_client, as JupyterLab starts one) runs `mlops_nb.run("square.ipynb", x=i)` several times; each
call is timed inside the kernel (the wall clock of the call, what the cell waits for). The first call pays for importing
MLflow into the kernel and for starting the project's warm worker; the later ones fork the job from that worker.
The peer: `mlops-nb run square.ipynb -p x i` from a terminal (a fresh process each time) with the worker warm, and an
untracked `papermill` call, the floor a user compares against.

Usage: python bench/notebook.py [--repeat 5]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import start_new_kernel
from nbformat.v4 import new_code_cell, new_notebook

BIN = Path(sys.executable).parent
SQUARE = new_notebook(cells=[new_code_cell('x: int = 2', metadata={'tags': ['parameters']}),
                             new_code_cell('import mlops_nb\nmlops_nb.record("square", x * x)')],
                      metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'MLOPS_NB_'))}
    e.update(MLFLOW_DISABLE_TELEMETRY='true', MLOPS_NB_WORKER_IDLE='600')
    return e


def in_kernel(kc, code: str) -> str:
    "Run `code` in the kernel; its stdout."
    out = []
    msg_id = kc.execute(code)
    while True:
        m = kc.get_iopub_msg(timeout=600)
        if m['parent_header'].get('msg_id') != msg_id: continue
        if m['msg_type'] == 'stream' and m['content']['name'] == 'stdout': out.append(m['content']['text'])
        if m['msg_type'] == 'error': raise RuntimeError('\n'.join(m['content']['traceback']))
        if m['msg_type'] == 'status' and m['content']['execution_state'] == 'idle': return ''.join(out)


def timed(cmd, cwd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env(), check=True, capture_output=True)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeat', type=int, default=5)
    n = ap.parse_args().repeat
    d = Path(tempfile.mkdtemp(prefix='bench_notebook_'))
    nbformat.write(SQUARE, d / 'square.ipynb')
    old = os.getcwd()
    os.chdir(d)
    saved = dict(os.environ)
    os.environ.clear(); os.environ.update(env())
    km, kc = start_new_kernel(kernel_name='python3', cwd=str(d))
    os.environ.clear(); os.environ.update(saved)
    os.chdir(old)
    try:
        kernel = []
        for i in range(n + 1):
            out = in_kernel(kc, f'import time, mlops_nb\nt = time.perf_counter()\nr = mlops_nb.run("square.ipynb", x={i}, progress=False)\n'
                                f'print(time.perf_counter() - t, r.status)')
            secs, status = out.split()
            assert status == 'FINISHED', out
            kernel.append(float(secs))
        cli = [timed([str(BIN / 'mlops-nb'), 'run', 'square.ipynb', '-p', 'x', str(i)], d) for i in range(n)]
        pm = [timed([str(BIN / 'papermill'), '-p', 'x', str(i), 'square.ipynb', 'out.ipynb'], d) for i in range(n)]
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)
        subprocess.run([str(BIN / 'mlops-nb'), 'worker', 'stop'], cwd=d, env=env(), capture_output=True)
    first, warm = kernel[0], statistics.median(kernel[1:])
    rows = [('mlops_nb.run in a kernel, first call (imports MLflow, starts the worker)', first),
            (f'mlops_nb.run in a kernel, later calls (median of {n})', warm),
            (f'mlops-nb run from a terminal, worker warm (median of {n})', statistics.median(cli)),
            (f'papermill, untracked (median of {n})', statistics.median(pm))]
    print(f"{'variant':<78} {'seconds':>8} {'vs kernel later':>16}")
    for name, v in rows: print(f"{name:<78} {v:8.2f} {v / warm:15.2f}x")
    print(f"later kernel calls: {', '.join(f'{v:.2f}' for v in kernel[1:])} s (shared machine: other work was running)")


if __name__ == '__main__':
    main()
