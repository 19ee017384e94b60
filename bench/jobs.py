"""Fixed cost of notebook jobs: `mlops-nb run` against papermill, as users would run each, in the same run.

(a) one short job (fit a logistic regression on iris, report its accuracy), each way a fresh process:
    - `mlops-nb run short.ipynb`                     (tracked: run, params, lineage, metric, notebook + HTML)
    - `papermill short.ipynb out.ipynb`              (no tracking at all)
    - `papermill short_mlflow.ipynb out.ipynb`       (the same notebook with the MLflow calls a user adds by
                                                      hand: start_run, log_params, log_metric, log_artifact)
(b) ten short jobs:
    - one `mlops-nb run` with the notebook ten times (warm worker reused)
    - a shell loop of ten `papermill` calls, with and without the hand-written MLflow logging

Usage: python bench/jobs.py [--repeat 3]     (prints a table and the ratios; takes a few minutes)
Every variant writes to its own fresh SQLite store created before timing starts.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

BIN = Path(sys.executable).parent
PARAMS = 'C: float = 1.0  # inverse regularisation\nseed: int = 0'
FIT = ('import pandas as pd\nfrom sklearn.datasets import load_iris\nfrom sklearn.linear_model import LogisticRegression\n'
       'X, y = load_iris(return_X_y=True, as_frame=True)\n'
       'acc = LogisticRegression(C=C, max_iter=500, random_state=seed).fit(X, y).score(X, y)\n')
TRACKED = FIT + 'import mlops_nb\nmlops_nb.record("accuracy", acc)'
PLAIN = FIT + 'print(acc)'
BY_HAND = (FIT + 'import mlflow, os\nmlflow.set_tracking_uri(os.environ["BENCH_TRACKING_URI"])\nmlflow.set_experiment("bench")\n'
           'with mlflow.start_run(run_name="short"):\n'
           '    mlflow.log_params({"C": C, "seed": seed})\n    mlflow.log_metric("accuracy", acc)\n'
           '    mlflow.log_artifact(os.environ["BENCH_NOTEBOOK"], "notebook")  # the notebook, as a user would')


def notebook(path, body):
    nb = new_notebook(cells=[new_code_cell(PARAMS, metadata={'tags': ['parameters']}), new_code_cell(body)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)
    return path


def fresh_store(d: Path) -> str:
    "A created, migrated SQLite store in `d` (store creation is not what is measured)."
    d.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{d / 'mlflow.db'}"
    subprocess.run([sys.executable, '-c', f"from mlflow import MlflowClient; c = MlflowClient({uri!r}); c.search_experiments(); "
                    "c.search_registered_models()"], check=True, capture_output=True)
    return uri


def env_for(d: Path, uri: str, nb: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'MLOPS_NB_'))}
    env.update(MLFLOW_TRACKING_URI=uri, BENCH_TRACKING_URI=uri, BENCH_NOTEBOOK=str(nb))
    return env


def timed(cmds, cwd, env) -> float:
    t = time.perf_counter()
    for c in cmds:
        r = subprocess.run(c, cwd=cwd, env=env, capture_output=True, text=True)
        if r.returncode: raise SystemExit(f"{' '.join(map(str, c))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeat', type=int, default=3, help='timings per variant; the median is reported')
    ap.add_argument('--jobs', type=int, default=10, help='jobs in part (b)')
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix='bench_jobs_'))
    tracked, plain, by_hand = notebook(root / 'short.ipynb', TRACKED), notebook(root / 'plain.ipynb', PLAIN), notebook(root / 'by_hand.ipynb', BY_HAND)
    n = a.jobs
    variants = {
        'a: mlops-nb run (1 job, tracked)': lambda d: [[BIN / 'mlops-nb', 'run', tracked]],
        'a: papermill (1 job, untracked)': lambda d: [[BIN / 'papermill', plain, d / 'out.ipynb', '--no-progress-bar']],
        'a: papermill + MLflow by hand (1 job)': lambda d: [[BIN / 'papermill', by_hand, d / 'out.ipynb', '--no-progress-bar']],
        f'b: mlops-nb run ({n} jobs, one command)': lambda d: [[BIN / 'mlops-nb', 'run', *[tracked] * n]],
        f'b: papermill shell loop ({n} jobs, untracked)': lambda d: [[BIN / 'papermill', plain, d / f'out{i}.ipynb', '--no-progress-bar'] for i in range(n)],
        f'b: papermill shell loop + MLflow by hand ({n} jobs)': lambda d: [[BIN / 'papermill', by_hand, d / f'out{i}.ipynb', '--no-progress-bar'] for i in range(n)],
    }
    results = {}
    for rep in range(a.repeat):
        for name, cmds in variants.items():
            d = root / f'{rep}-{abs(hash(name))}'
            uri = fresh_store(d)
            results.setdefault(name, []).append(timed(cmds(d), d, env_for(d, uri, by_hand)))
            print(f"  {name}: {results[name][-1]:.2f}s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{'variant':<52} {'median s':>9}  (runs: {a.repeat})")
    for k, v in med.items(): print(f"{k:<52} {v:9.2f}")
    names = list(med)
    print('\nratios (higher = mlops-nb faster):')
    print(f"  (a) papermill untracked / mlops-nb run:         {med[names[1]] / med[names[0]]:.2f}x")
    print(f"  (a) papermill + MLflow by hand / mlops-nb run:  {med[names[2]] / med[names[0]]:.2f}x")
    print(f"  (b) papermill loop / mlops-nb run:              {med[names[4]] / med[names[3]]:.2f}x")
    print(f"  (b) papermill loop + MLflow / mlops-nb run:     {med[names[5]] / med[names[3]]:.2f}x")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
