"""Batch scoring: `mlflow models predict` against `mlops-nb predict`, same model, same rows, 1M and 5M rows.

`mlflow models predict` reads CSV or JSON only, so it gets the CSV written from the same frame as the
Parquet file that `mlops-nb predict` reads (a row of `mlops-nb` on the CSV is shown too). Wall time and
peak memory of the whole process tree: the sum of every process's proportional set size (PSS, so
pages shared between the CLI, the warm worker and the job forked from it count once), polled every
0.1 s with psutil, children included; for `mlops-nb` the project's warm worker and the processes it forked
(the command and its job) are counted too, the worker's resident libraries included. Peak RSS of the
largest single process is shown too. Prints a table with ratios. `mlops-nb` runs once with its warm
worker stopped first (the command starts it, as a nightly job would) and then with it running (as for
a backfill of many files).

    python bench/batch.py [--rows 1000000 5000000] [--model logistic]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tests'))
from batch_helpers import make_rows, train_and_register


def _tree(root, cwd) -> list:
    "The command's processes and children, and the project's warm worker with what it forked (the command and job run there)."
    procs = {root.pid: root, **{q.pid: q for q in root.children(recursive=True)}}
    from mlops_nb.worker import worker_paths  # this Python environment's worker (the bench runs the same interpreter)
    for info in [worker_paths().info]:
        try:
            w = psutil.Process(json.loads(info.read_text())['pid'])
            procs.update({q.pid: q for q in (w, *w.children(recursive=True))})
        except (psutil.Error, OSError, ValueError, KeyError): pass
    return list(procs.values())


def measure(cmd, cwd, env) -> tuple[float, float, float, int]:
    "(seconds, peak MB of the process tree (summed PSS), peak RSS MB of one process, exit code) of running `cmd`."
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, peak, peak_one = psutil.Process(p.pid), 0, 0
    while p.poll() is None:
        try:
            pss = 0
            for q in _tree(root, cwd):
                try:
                    m = q.memory_full_info()
                    pss += m.pss; peak_one = max(peak_one, m.rss)
                except psutil.Error: pass
            peak = max(peak, pss)
        except psutil.Error: pass
        time.sleep(0.1)
    err = p.stderr.read()
    dt = time.perf_counter() - t0
    if p.returncode: print(f"  {cmd[:3]} exited {p.returncode}: {err[-1500:]}", file=sys.stderr)
    return dt, peak / 2**20, peak_one / 2**20, p.returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rows', type=int, nargs='+', default=[1_000_000, 5_000_000])
    ap.add_argument('--model', default='logistic', help='model factory of the scored model (default logistic)')
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix='mlops_nb_bench_batch_'))
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'MLOPS_NB_'))}
    env.update(MLFLOW_DISABLE_TELEMETRY='true', MLFLOW_TRACKING_URI=f"sqlite:///{d / 'mlflow.db'}")
    print(f"training and registering a {a.model} model in {d} ...", flush=True)
    train_and_register(d, model=a.model)
    exe = str(Path(sys.executable).parent / 'mlops-nb')
    uri = 'models:/batchdemo@champion'
    rows_out = []
    for n in a.rows:
        df = make_rows(n)
        df.to_parquet(d / f'in_{n}.parquet', row_group_size=100_000)
        df.to_csv(d / f'in_{n}.csv', index=False)
        del df
        stop = [exe, 'worker', 'stop', '--force']
        runs = {  # name -> (untimed command first, timed command)
            'mlflow models predict (CSV)': (None, [sys.executable, '-m', 'mlflow', 'models', 'predict', '-m', uri, '-i', f'in_{n}.csv',
                                                   '-t', 'csv', '-o', f'mlflow_{n}.json', '--env-manager', 'local']),
            'mlops-nb predict (Parquet), cold worker': (stop, [exe, 'predict', uri, f'in_{n}.parquet', '--out', f'ours_{n}.parquet', '--keep', 'id']),
            'mlops-nb predict (Parquet), warm worker': (None, [exe, 'predict', uri, f'in_{n}.parquet', '--out', f'ours_w_{n}.parquet', '--keep', 'id']),
            'mlops-nb predict (CSV), warm worker': (None, [exe, 'predict', uri, f'in_{n}.csv', '--out', f'ours_csv_{n}.parquet', '--keep', 'id']),
        }
        res = {}
        for name, (before, cmd) in runs.items():
            if before: subprocess.run(before, cwd=d, env=env, capture_output=True)
            print(f"{n:>9,} rows  {name} ...", flush=True)
            res[name] = measure(cmd, d, env)
        base = res['mlflow models predict (CSV)']
        for name, (t, m, one, rc) in res.items():
            rows_out.append((n, name, t, m, one, base[0] / t, m / base[1], rc))
        if n == a.rows[0]:  # the same predictions
            import json
            import pandas as pd
            theirs = json.loads((d / f'mlflow_{n}.json').read_text())['predictions']
            ours = pd.read_parquet(d / f'ours_{n}.parquet')['prediction'].tolist()
            print(f"  same predictions as mlflow on {n:,} rows: {theirs == ours}")
        for f in d.glob(f'*_{n}.*'): f.unlink(missing_ok=True) if f.is_file() else None
    subprocess.run([exe, 'worker', 'stop', '--force'], cwd=d, env=env, capture_output=True)
    print(f"\n{'rows':>10}  {'tool':<40} {'seconds':>8} {'peak MB':>8} {'1 proc':>7} {'speed-up':>9} {'memory':>8}")
    for n, name, t, m, one, sp, mr, rc in rows_out:
        print(f"{n:>10,}  {name:<40} {t:8.1f} {m:8.0f} {one:7.0f} {sp:8.2f}x {mr:7.2f}x" + ('' if rc == 0 else f'  (exit {rc})'))
    print("\npeak MB: summed PSS of the process tree; 1 proc: peak RSS of its largest process.")
    print("speed-up: mlflow's seconds / these seconds; memory: this peak / mlflow's peak (lower is better).")


if __name__ == '__main__':
    main()
