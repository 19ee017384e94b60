"""Memory of the warm worker(s) after commands in three project folders: one worker per folder (main's code) against
one worker per user and Python environment (this tree's code).

For each variant: three fresh folders, one `mlops-nb run` of a trivial tracked notebook in each, one after another; then,
with nothing running, the PSS (from /proc/PID/smaps_rollup) of every worker process and whatever it forked, summed. The
variants run the same interpreter and libraries; only the mlops_nb code differs (PYTHONPATH points at each tree).

    flock /tmp/bench.lock python bench/worker_memory.py [--main /work/main]
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mlops_nb.procs import pss, tree  # noqa: E402

CLI = 'import sys; from mlops_nb.cli import main; sys.exit(main())'


def project(d: Path) -> Path:
    d.mkdir()
    nb = new_notebook(cells=[new_code_cell('x: float = 2.0', metadata={'tags': ['parameters']}),
                             new_code_cell('import mlops_nb\nmlops_nb.record("y", x * 21)')])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, d / 'triv.ipynb')
    return d


def env_for(code: Path, worker_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'MLOPS_NB_'))}
    env.update(PYTHONPATH=str(code), MLFLOW_DISABLE_TELEMETRY='true', MLOPS_NB_WORKER='1', MLOPS_NB_WORKER_IDLE='300',
               MLOPS_NB_WORKER_DIR=worker_dir)
    return env


def cli(args, cwd, env):
    return subprocess.run([sys.executable, '-c', CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def variant(name: str, code: Path, base: Path) -> dict:
    wdir = tempfile.mkdtemp(prefix='wb')
    env = env_for(code, wdir)
    dirs = [project(base / f'{name}-{i}') for i in range(3)]
    t0 = time.perf_counter()
    for d in dirs:
        r = cli(['run', 'triv.ipynb'], d, env)
        if r.returncode: raise SystemExit(f"{name}: run failed in {d}:\n{r.stderr[-2000:]}")
    secs = time.perf_counter() - t0
    time.sleep(5)  # the workers finish loading what jobs need and open the stores, between requests
    pids = set()
    for d in dirs:
        st = json.loads(cli(['worker', 'status', '--json'], d, env).stdout)
        if st.get('running'): pids.add(st['pid'])
    procs = {p for w in pids for p in tree(w)}
    sizes = {p: pss(p) or 0 for p in procs}
    for d in dirs: cli(['worker', 'stop', '--force'], d, env)
    return {'variant': name, 'workers': len(pids), 'processes': len(procs), 'pss_mb': sum(sizes.values()) / 2**20,
            'per_worker_mb': sorted(round(sizes[w] / 2**20) for w in pids), 'seconds_3_runs': secs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--main', default='/work/main', help="a checkout of main (one worker per folder)")
    a = ap.parse_args()
    load = open('/proc/loadavg').read().split()[:3]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [variant('per folder (main)', Path(a.main), Path(tmp)), variant('per environment (this)', ROOT, Path(tmp))]
    print(f"load average before: {' '.join(load)}; after: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print(f"{'variant':<26}{'workers':>8}{'procs':>7}{'PSS MB':>9}  per worker MB   3 runs s")
    for r in rows:
        print(f"{r['variant']:<26}{r['workers']:>8}{r['processes']:>7}{r['pss_mb']:>9.0f}  {str(r['per_worker_mb']):<15}{r['seconds_3_runs']:>7.1f}")
    print(f"memory, per folder / per environment: {rows[0]['pss_mb'] / rows[1]['pss_mb']:.2f}x")


if __name__ == '__main__':
    main()
