"""Running notebooks as jobs through the real CLI: success, failure mid-way, bad parameters."""
import json

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from conftest import mlops_nb


def _notebook(path, *cells, params='n: int = 3  # how many metrics'):
    nb = new_notebook(cells=[new_code_cell(params, metadata={'tags': ['parameters']}), *map(new_code_cell, cells)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)
    return path


def _runs(d):
    from mlflow import MlflowClient
    if not (d / 'mlflow.db').exists(): return []
    c = MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
    return [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]


def test_job_that_raises_midway_is_failed_with_its_metrics_and_partial_notebook(workdir):
    nb = _notebook(workdir / 'flaky.ipynb',
                   'import mlops_nb\nfor i in range(n): mlops_nb.record("loss", 1.0 / (i + 1))',
                   'raise RuntimeError("disk full while writing features")',
                   'mlops_nb.record("never", 1.0)')
    r = mlops_nb('run', nb, '-p', 'n', '4', '--json', cwd=workdir)
    assert r.returncode == 1, r.stderr
    res = json.loads(r.stdout)
    assert res['status'] == 'FAILED' and res['error']['ename'] == 'RuntimeError'
    assert 'disk full' in res['error']['evalue'] and res['error']['cell'] == 3  # 0 params, 1 injected, 2 loop, 3 raise
    from mlflow import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = c.get_run(res['run_id'])
    assert run.info.status == 'FAILED'
    assert [m.value for m in c.get_metric_history(res['run_id'], 'loss')] == [1.0, 0.5, 1 / 3, 0.25]
    assert 'never' not in run.data.metrics
    assert run.data.tags['mlops_nb.failure_reason'] == 'error'
    partial = nbformat.read(c.download_artifacts(res['run_id'], 'notebook/flaky.ipynb', str(workdir)), as_version=4)
    errors = [o for cell in partial.cells for o in cell.get('outputs', []) if o.output_type == 'error']
    assert errors and errors[0].ename == 'RuntimeError'


def test_failure_is_reported_for_people(workdir):
    nb = _notebook(workdir / 'bad.ipynb', 'x = 1 / 0')
    r = mlops_nb('run', nb, cwd=workdir)
    assert r.returncode == 1
    assert 'FAILED' in r.stdout and 'ZeroDivisionError' in r.stdout and 'cell 1 (In [2])' in r.stdout  # no -p: papermill injects no cell


def test_bad_parameter_exits_2_and_starts_nothing(workdir):
    nb = _notebook(workdir / 'ok.ipynb', 'print(n)')
    r = mlops_nb('run', nb, '-p', 'nn', '4', cwd=workdir)
    assert r.returncode == 2
    assert "'nn'" in r.stderr and 'ok.ipynb' in r.stderr and 'n' in r.stderr
    r = mlops_nb('run', nb, '-p', 'n', 'four', cwd=workdir)
    assert r.returncode == 2 and 'int' in r.stderr
    assert _runs(workdir) == []  # no run was created


def test_successful_job_records_into_its_run(workdir):
    nb = _notebook(workdir / 'sq.ipynb', 'import mlops_nb\nmlops_nb.record("square", n * n)')
    r = mlops_nb('run', nb, '-p', 'n', '5', '--json', cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res['metrics']['square'] == 25.0 and res['recorded']['square'] == 25.0
    assert res['parameters'] == {'n': 5}


def test_two_jobs_starting_together_on_a_fresh_store_both_finish(workdir):
    "Creating the SQLite store is serialised: parallel first jobs must not collide on its tables."
    import subprocess, sys
    from pathlib import Path
    from conftest import clean_env
    nb = _notebook(workdir / 'sq.ipynb', 'import mlops_nb\nmlops_nb.record("square", n * n)')
    exe = Path(sys.executable).parent / 'mlops-nb'
    procs = [subprocess.Popen([str(exe), 'run', str(nb), '-p', 'n', str(i), '--json'], cwd=workdir, env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (2, 3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert sorted(json.loads(o[0])['metrics']['square'] for o in outs) == [4.0, 9.0]
    assert len(_runs(workdir)) == 2
