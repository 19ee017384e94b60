"""Fixed cost of notebook jobs: `mlops-nb run` against papermill, as users would run each, in the same run.

Two notebooks: a *trivial* one (a parameters cell and one cell computing and recording a number) and a *short*
one (fit a logistic regression on iris, record its accuracy). Each way is a fresh `mlops-nb`/`papermill` process:
(a) one job:
    - `mlops-nb run NB`, cold worker      (a project whose warm worker is not running: the command starts it)
    - `mlops-nb run NB`, warm worker      (the project's worker already running, as for every run after the first)
    - `mlops-nb run --no-worker NB`       (in-process: a forkserver per command, as before the persistent worker)
    - `papermill NB out.ipynb`            (no tracking at all)
    - `papermill NB_mlflow out.ipynb`     (the same notebook with the MLflow calls a user adds by hand:
                                           start_run, log_params, log_metric, log_artifact)
(floor) `python -c "import mlflow, mlflow.store.tracking.sqlalchemy_store"`: what any process that writes a run
    to the SQLite store must do first, so a cold tracked run can never be faster than it
(b) ten short jobs:
    - one `mlops-nb run` with the notebook ten times (cold worker)
    - a shell loop of ten `papermill` calls, with and without the hand-written MLflow logging

Usage: python bench/jobs.py [--repeat 3] [--only TEXT]...   (prints a table and the ratios; takes a few minutes;
       e.g. --only 'trivial: mlops-nb run, cold' --only 'trivial: papermill' --only floor: the cold row and its peers)
Every variant writes to its own fresh SQLite store created before timing starts; every worker is stopped after its variant.
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
TRIVIAL = 'import mlops_nb\ny = C * 21\nmlops_nb.record("y", y)'  # untracked under papermill: record only displays the value
BY_HAND = (FIT + 'import mlflow, os\nmlflow.set_tracking_uri(os.environ["BENCH_TRACKING_URI"])\nmlflow.set_experiment("bench")\n'
           'with mlflow.start_run(run_name="short"):\n'
           '    mlflow.log_params({"C": C, "seed": seed})\n    mlflow.log_metric("accuracy", acc)\n'
           '    mlflow.log_artifact(os.environ["BENCH_NOTEBOOK"], "notebook")  # the notebook, as a user would')


FLOOR = 'import mlflow, mlflow.store.tracking.sqlalchemy_store'  # what any process that writes a run to SQLite imports first


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


def call(c, cwd, env):
    r = subprocess.run(c, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{' '.join(map(str, c))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def timed(cmds, cwd, env, prep=()) -> float:
    "Seconds `cmds` take one after another in `cwd`, after untimed `prep` commands; the project's worker stopped after."
    for c in prep: call(c, cwd, env)
    try:
        t = time.perf_counter()
        for c in cmds: call(c, cwd, env)
        return time.perf_counter() - t
    finally: subprocess.run([BIN / 'mlops-nb', 'worker', 'stop', '--force'], cwd=cwd, env=env, capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeat', type=int, default=3, help='timings per variant; the median is reported')
    ap.add_argument('--jobs', type=int, default=10, help='jobs in part (b)')
    ap.add_argument('--only', action='append', default=[], metavar='TEXT', help='run only the variants whose name contains TEXT (repeatable)')
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix='bench_jobs_'))
    tracked, plain, by_hand = notebook(root / 'short.ipynb', TRACKED), notebook(root / 'plain.ipynb', PLAIN), notebook(root / 'by_hand.ipynb', BY_HAND)
    trivial = notebook(root / 'trivial.ipynb', TRIVIAL)
    n, mn, pm = a.jobs, BIN / 'mlops-nb', BIN / 'papermill'
    warm = lambda nb: [[mn, 'worker', 'start'], [mn, 'run', nb]]  # untimed: the worker is up and has run this notebook once
    variants = {  # name -> (untimed preparation, timed commands)
        'trivial: mlops-nb run, cold worker': lambda d: ((), [[mn, 'run', trivial]]),
        'trivial: mlops-nb run, warm worker': lambda d: (warm(trivial), [[mn, 'run', trivial]]),
        'trivial: mlops-nb run --no-worker': lambda d: ((), [[mn, 'run', '--no-worker', trivial]]),
        'trivial: papermill (untracked)': lambda d: ((), [[pm, trivial, d / 'out.ipynb', '--no-progress-bar']]),
        'floor: python importing MLflow and its SQL store': lambda d: ((), [[sys.executable, '-c', FLOOR]]),
        'short: mlops-nb run, cold worker': lambda d: ((), [[mn, 'run', tracked]]),
        'short: mlops-nb run, warm worker': lambda d: (warm(tracked), [[mn, 'run', tracked]]),
        'short: mlops-nb run --no-worker': lambda d: ((), [[mn, 'run', '--no-worker', tracked]]),
        'short: papermill (untracked)': lambda d: ((), [[pm, plain, d / 'out.ipynb', '--no-progress-bar']]),
        'short: papermill + MLflow by hand': lambda d: ((), [[pm, by_hand, d / 'out.ipynb', '--no-progress-bar']]),
        f'b: mlops-nb run ({n} short jobs, one command, cold worker)': lambda d: ((), [[mn, 'run', *[tracked] * n]]),
        f'b: papermill shell loop ({n} jobs, untracked)': lambda d: ((), [[pm, plain, d / f'out{i}.ipynb', '--no-progress-bar'] for i in range(n)]),
        f'b: papermill shell loop + MLflow by hand ({n} jobs)': lambda d: ((), [[pm, by_hand, d / f'out{i}.ipynb', '--no-progress-bar'] for i in range(n)]),
    }
    if a.only: variants = {k: v for k, v in variants.items() if any(t in k for t in a.only)}
    results = {}
    for rep in range(a.repeat):
        for name, cmds in variants.items():
            d = root / f'{rep}-{abs(hash(name))}'
            uri = fresh_store(d)
            prep, timed_cmds = cmds(d)
            results.setdefault(name, []).append(timed(timed_cmds, d, env_for(d, uri, by_hand), prep))
            print(f"  {name}: {results[name][-1]:.2f}s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{'variant':<60} {'median s':>9}  (runs: {a.repeat})")
    for k, v in med.items(): print(f"{k:<60} {v:9.2f}")
    r = lambda a_, b_: f"{med[a_] / med[b_]:.2f}x" if a_ in med and b_ in med else '-'
    print('\nratios (higher = mlops-nb faster):')
    for nb in ('trivial', 'short'):
        for how in ('cold worker', 'warm worker', '--no-worker'):
            run = f'{nb}: mlops-nb run, {how}' if 'worker' in how and how != '--no-worker' else f'{nb}: mlops-nb run --no-worker'
            print(f"  ({nb}) papermill untracked / mlops-nb run, {how}:{'':<4} {r(f'{nb}: papermill (untracked)', run)}")
    print(f"  (short) papermill + MLflow by hand / mlops-nb run, warm worker: {r('short: papermill + MLflow by hand', 'short: mlops-nb run, warm worker')}")
    print(f"  (trivial) papermill untracked / the MLflow import alone:  {r('trivial: papermill (untracked)', 'floor: python importing MLflow and its SQL store')}")
    names = [k for k in variants if k.startswith('b:')]
    if len(names) == 3:
        print(f"  (b) papermill loop / mlops-nb run:              {r(names[1], names[0])}")
        print(f"  (b) papermill loop + MLflow / mlops-nb run:     {r(names[2], names[0])}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
