"""A 4-notebook pipeline (prepare -> train_a, train_b -> report): `mlops-nb pipeline run` against what users do
otherwise, first run and a second run with nothing changed, in the same invocation.

- mlops-nb:  `mlops-nb pipeline run pipeline.yaml` (parent run + a child run per step; train_a and train_b in
             parallel; the rerun reuses every step from the cache)
- ploomber:  `ploomber build` of the same notebooks (papermill, a Jupyter kernel per task; incremental builds skip
             up-to-date tasks), each notebook logging to MLflow by hand. ploomber is installed in its own venv
             (bench/out/ploomber-venv, `--ploomber-python`) because it pins older libraries; its kernels run in
             this environment through a kernelspec written for the benchmark.
- papermill: a plain script calling papermill on each notebook in order, logging to MLflow by hand (no cache:
             its rerun runs everything again).

Usage: python bench/pipeline.py [--ploomber-python bench/out/ploomber-venv/bin/python]   (a few minutes)
Every variant gets a fresh, migrated SQLite store (not timed); after each run the store is checked to hold the
runs with the expected metrics.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

sys.path.insert(0, str(Path(__file__).parent))
from jobs import BIN, fresh_store  # noqa: E402

HERE = Path(__file__).resolve().parent
KERNEL = 'mlops-nb-bench'

# The work of each step, shared by every variant (only how it is wired and tracked differs).
PREPARE = ('from sklearn.datasets import make_classification\nimport pandas as pd\n'
           'X, y = make_classification(n_samples=rows, n_features=20, random_state=seed)\n'
           'df = pd.DataFrame(X, columns=[f"f{i}" for i in range(20)]); df["target"] = y\ndf.to_csv(data_out, index=False)')
TRAIN = ('import pandas as pd\nfrom sklearn.model_selection import train_test_split\n'
         'df = pd.read_csv(data)\nXtr, Xte, ytr, yte = train_test_split(df.drop(columns="target"), df["target"], random_state=0)\n'
         '{model}\nacc = float(m.fit(Xtr, ytr).score(Xte, yte))')
MODELS = {'train_a': 'from sklearn.linear_model import LogisticRegression\nm = LogisticRegression(max_iter=500)',
          'train_b': 'from sklearn.ensemble import RandomForestClassifier\nm = RandomForestClassifier(n_estimators=50, random_state=0)'}
REPORT = 'best = max(acc_a, acc_b)\nprint(f"best accuracy {best:.3f}")'

BY_HAND_LOG = ('import mlflow, os\nmlflow.set_tracking_uri(os.environ["BENCH_TRACKING_URI"]); mlflow.set_experiment("bench")\n'
               'with mlflow.start_run(run_name={name!r}):\n    mlflow.log_params({params})\n    mlflow.log_metrics({metrics})')


def write_nb(path: Path, params: str, *cells: str, kernel: str = 'python3') -> Path:
    nb = new_notebook(cells=[new_code_cell(params, metadata={'tags': ['parameters']}), *map(new_code_cell, cells)])
    nb.metadata['kernelspec'] = {'name': kernel, 'display_name': kernel, 'language': 'python'}
    nbformat.write(nb, str(path))
    return path


def mlops_nb_project(d: Path):
    "The notebooks with `mlops_nb.record`, and the pipeline file wiring them by references."
    d.mkdir(parents=True, exist_ok=True)
    write_nb(d / 'prepare.ipynb', 'rows: int = 4000\nseed: int = 0\ndata_out: str = "data.csv"', PREPARE,
             'import mlops_nb\nmlops_nb.record("data.csv", data_out); mlops_nb.record("rows", rows)')
    for n, m in MODELS.items():
        write_nb(d / f'{n}.ipynb', 'data: str = ""', TRAIN.format(model=m), 'import mlops_nb\nmlops_nb.record("accuracy", acc)')
    write_nb(d / 'report.ipynb', 'acc_a: float = 0.0\nacc_b: float = 0.0', REPORT, 'import mlops_nb\nmlops_nb.record("best", best)')
    (d / 'pipeline.yaml').write_text(
        'name: bench\nsteps:\n  prepare: {notebook: prepare.ipynb}\n'
        '  train_a: {notebook: train_a.ipynb, parameters: {data: "${prepare.artifacts.data.csv}"}}\n'
        '  train_b: {notebook: train_b.ipynb, parameters: {data: "${prepare.artifacts.data.csv}"}}\n'
        '  report: {notebook: report.ipynb, parameters: {acc_a: "${train_a.metrics.accuracy}", acc_b: "${train_b.metrics.accuracy}"}}\n')


def by_hand_notebooks(d: Path, kernel: str, ploomber: bool):
    "The same work logging to MLflow by hand; for ploomber, wired by its `upstream`/`product` convention."
    d.mkdir(parents=True, exist_ok=True)
    log = lambda name, params, metrics: BY_HAND_LOG.format(name=name, params=params, metrics=metrics)
    up = lambda names: f'upstream = {names!r}\nproduct = None' if ploomber else ''
    write_nb(d / 'prepare.ipynb', (up(None) + '\n' if ploomber else '') + 'rows = 4000\nseed = 0\ndata_out = "data.csv"',
             *(['data_out = str(product["data"])'] if ploomber else []), PREPARE,
             log('prepare', '{"rows": rows, "seed": seed}', '{"rows": rows}'), kernel=kernel)
    for n, m in MODELS.items():
        write_nb(d / f'{n}.ipynb', (up(['prepare']) if ploomber else 'data = ""\nmetrics_out = ""'),
                 *(['data = str(upstream["prepare"]["data"]); metrics_out = str(product["metrics"])'] if ploomber else []),
                 TRAIN.format(model=m), log(n, '{"data": data}', '{"accuracy": acc}'),
                 'import json; open(metrics_out, "w").write(json.dumps({"accuracy": acc}))', kernel=kernel)
    write_nb(d / 'report.ipynb', (up(['train_a', 'train_b']) if ploomber else 'a_json = ""\nb_json = ""'),
             ('a_json, b_json = str(upstream["train_a"]["metrics"]), str(upstream["train_b"]["metrics"])\n' if ploomber else '')
             + 'import json; acc_a = json.load(open(a_json))["accuracy"]; acc_b = json.load(open(b_json))["accuracy"]',
             REPORT, log('report', '{}', '{"best": best}'), kernel=kernel)
    if ploomber:
        (d / 'pipeline.yaml').write_text(
            'tasks:\n'
            '  - {source: prepare.ipynb, product: {nb: out/prepare.ipynb, data: out/data.csv}}\n'
            '  - {source: train_a.ipynb, product: {nb: out/train_a.ipynb, metrics: out/a.json}}\n'
            '  - {source: train_b.ipynb, product: {nb: out/train_b.ipynb, metrics: out/b.json}}\n'
            '  - {source: report.ipynb, product: {nb: out/report.ipynb}}\n')


def papermill_script(d: Path, env: dict):
    "What a user writes without a pipeline tool: papermill on each notebook, in order."
    pm = [str(BIN / 'papermill'), '--no-progress-bar']
    for n, params in (('prepare', []), ('train_a', ['-p', 'data', 'data.csv', '-p', 'metrics_out', 'a.json']),
                      ('train_b', ['-p', 'data', 'data.csv', '-p', 'metrics_out', 'b.json']),
                      ('report', ['-p', 'a_json', 'a.json', '-p', 'b_json', 'b.json'])):
        run([*pm, f'{n}.ipynb', f'out-{n}.ipynb', *params], d, env)


def run(cmd, cwd, env) -> subprocess.CompletedProcess:
    r = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def runs_with(uri: str, metric: str) -> int:
    from mlflow import MlflowClient
    c = MlflowClient(uri)
    return sum(metric in r.data.metrics and r.info.status == 'FINISHED'
               for e in c.search_experiments() for r in c.search_runs([e.experiment_id], max_results=1000))


def kernelspec(root: Path) -> Path:
    "A kernelspec running this environment's Python, for kernels started from the ploomber venv."
    k = root / 'jupyter' / 'kernels' / KERNEL
    k.mkdir(parents=True, exist_ok=True)
    (k / 'kernel.json').write_text(json.dumps({'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                                               'display_name': KERNEL, 'language': 'python'}))
    return root / 'jupyter'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--ploomber-python', default=str(HERE / 'out' / 'ploomber-venv' / 'bin' / 'python'),
                    help='python of a venv with ploomber installed (skipped if missing)')
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix='bench_pipeline_'))
    base = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'MLOPS_NB_'))}
    base['MLFLOW_DISABLE_TELEMETRY'] = 'true'
    rows = {}

    d = root / 'mlops_nb'; mlops_nb_project(d)
    uri = fresh_store(d)
    env = {**base, 'MLFLOW_TRACKING_URI': uri}
    cmd = [BIN / 'mlops-nb', 'pipeline', 'run', 'pipeline.yaml', '--json']
    t = time.perf_counter(); first = json.loads(run(cmd, d, env).stdout); t1 = time.perf_counter() - t
    t = time.perf_counter(); again = json.loads(run(cmd, d, env).stdout); t2 = time.perf_counter() - t
    assert first['status'] == 'FINISHED' and {s['state'] for s in again['steps'].values()} == {'reused'}, (first, again)
    rows['mlops-nb pipeline run'] = (t1, t2, runs_with(uri, 'accuracy'), 'all 4 steps reused')

    d = root / 'papermill'; by_hand_notebooks(d, 'python3', ploomber=False)
    uri = fresh_store(d)
    env = {**base, 'BENCH_TRACKING_URI': uri}
    t = time.perf_counter(); papermill_script(d, env); t1 = time.perf_counter() - t
    t = time.perf_counter(); papermill_script(d, env); t2 = time.perf_counter() - t
    rows['papermill script + MLflow by hand'] = (t1, t2, runs_with(uri, 'accuracy'), 'no cache: runs all 4 again')

    py = Path(a.ploomber_python)
    if py.exists() and subprocess.run([str(py), '-c', 'import ploomber'], capture_output=True).returncode == 0:
        d = root / 'ploomber'; by_hand_notebooks(d, KERNEL, ploomber=True)
        uri = fresh_store(d)
        env = {**base, 'BENCH_TRACKING_URI': uri, 'JUPYTER_PATH': str(kernelspec(root))}
        cmd = [py.parent / 'ploomber', 'build', '-e', 'pipeline.yaml']
        t = time.perf_counter(); run(cmd, d, env); t1 = time.perf_counter() - t
        t = time.perf_counter(); r = run(cmd, d, env); t2 = time.perf_counter() - t
        skipped = 'skipped' if 'Skipped' in r.stdout or 'skipped' in r.stdout.lower() else 'see output'
        rows['ploomber build + MLflow by hand'] = (t1, t2, runs_with(uri, 'accuracy'), f'incremental build ({skipped})')
    else: print(f"ploomber not found at {py}: skipped (pip install ploomber in a venv there)", file=sys.stderr)

    print(f"\n{'variant':<36} {'first s':>8} {'rerun s':>8} {'train runs':>10}  rerun")
    for k, (t1, t2, n, note) in rows.items(): print(f"{k:<36} {t1:8.1f} {t2:8.1f} {n:>10}  {note}")
    m1, m2 = rows['mlops-nb pipeline run'][:2]
    print('\nratios (higher = mlops-nb faster):')
    for k, (t1, t2, *_) in rows.items():
        if not k.startswith('mlops-nb'): print(f"  {k:<36} first {t1 / m1:5.2f}x   rerun {t2 / m2:5.2f}x")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
