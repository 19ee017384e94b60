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
    "Every run in `d`'s store; through mlops_nb's client, which waits while a job is still creating the store."
    from mlops_nb.core import get_settings
    from mlops_nb.tracking import client
    if not (d / 'mlflow.db').exists(): return []
    c = client(get_settings(tracking_uri=f"sqlite:///{d / 'mlflow.db'}"))
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


# --- failure modes, each through the real CLI -------------------------------------------------------------

def _run_row(d, run_id):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}").get_run(run_id)


def _no_run_left_running(d):
    assert [r.info.run_id for r in _runs(d) if r.info.status == 'RUNNING'] == []


import pytest  # noqa: E402


@pytest.mark.parametrize('engine', ['fast', 'papermill'])
@pytest.mark.parametrize('how', ['os._exit(3)', 'os.kill(os.getpid(), signal.SIGKILL)'])
def test_kernel_death_is_failed_within_seconds_with_partial_notebook(workdir, engine, how):
    nb = _notebook(workdir / 'die.ipynb', 'import os, signal, mlops_nb\nmlops_nb.record("before", 1.0)\nprint("about to die")', how,
                   'print("never")')
    r = mlops_nb('run', nb, '--engine', engine, '--json', cwd=workdir, timeout=120)  # no hang: the subprocess timeout would fire
    assert r.returncode == 1, r.stderr
    res = json.loads(r.stdout)
    assert res['status'] == 'FAILED' and res['error']['reason'] == 'kernel_died', res['error']
    run = _run_row(workdir, res['run_id'])
    assert run.info.status == 'FAILED' and run.data.tags['mlops_nb.failure_reason'] == 'kernel_died'
    assert run.data.metrics['before'] == 1.0  # what was recorded before the death is kept
    partial = nbformat.read(res['output'], as_version=4)
    assert 'about to die' in nbformat.writes(partial)  # the cells that ran before the death, with their outputs
    _no_run_left_running(workdir)


def test_timeout_bounds_the_whole_job(workdir):
    nb = _notebook(workdir / 'slow.ipynb', 'import time, mlops_nb\nmlops_nb.record("started", 1.0)',
                   'for i in range(60): time.sleep(1)  # each cell is short of --cell-timeout; the job is not', 'mlops_nb.record("finished", 1.0)')
    r = mlops_nb('run', nb, '--timeout', '8', '--cell-timeout', '30', '--json', cwd=workdir, timeout=120)
    assert r.returncode == 1
    res = json.loads(r.stdout)
    assert res['error']['reason'] == 'timeout' and 'timeout of 8 s' in res['error']['evalue']
    assert res['error']['cell'] == 2  # the cell that was running: 0 parameters (no -p: nothing injected), 1 record, 2 loop
    run = _run_row(workdir, res['run_id'])
    assert run.info.status == 'FAILED' and run.data.tags['mlops_nb.failure_reason'] == 'timeout'
    assert 'started' in run.data.metrics and 'finished' not in run.data.metrics
    partial = nbformat.read(res['output'], as_version=4)
    assert 'papermill-error-cell-tag' in partial.cells[0].metadata.tags  # the banner says why
    stopped = [c for c in partial.cells if c.get('metadata', {}).get('papermill', {}).get('status') == 'failed']
    assert len(stopped) == 1 and 'time.sleep(1)' in stopped[0].source


def test_retries_rerun_a_failed_job_as_linked_runs(workdir):
    flaky = _notebook(workdir / 'flaky.ipynb', 'from pathlib import Path\np = Path("attempts.txt")\n'
                      'p.write_text(p.read_text() + "x" if p.exists() else "x")\n'
                      'if len(p.read_text()) < 2: raise ConnectionError("service not ready")')
    r = mlops_nb('run', flaky, '--retries', '2', '--json', cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    first, second = res['attempts']
    assert res['run_id'] == second and res['status'] == 'FINISHED'
    a, b = _run_row(workdir, first), _run_row(workdir, second)
    assert (a.info.status, b.info.status) == ('FAILED', 'FINISHED')
    assert b.data.tags['mlops_nb.retry_of'] == first and b.data.tags['mlops_nb.attempt'] == '2'
    broken = _notebook(workdir / 'broken.ipynb', 'raise ValueError("always")')
    r = mlops_nb('run', broken, '--retries', '1', '--json', cwd=workdir)
    assert r.returncode == 1 and len(json.loads(r.stdout)['attempts']) == 2  # the final status is the last attempt's
    _no_run_left_running(workdir)


def test_secret_never_appears_in_any_artifact_log_or_param(workdir):
    value = 'tok-4f1a-SECRET-9b2c'
    nb = _notebook(workdir / 'secret.ipynb', 'import mlops_nb\nprint("using", api_token)\nmlops_nb.record("token_len", len(api_token))',
                   'import sys; print(f"stderr {api_token}", file=sys.stderr)\nraise RuntimeError(f"auth failed for {api_token}")',
                   params='n: int = 1\napi_token: str = ""  # the service token')
    r = mlops_nb('run', nb, '-p', 'api_token', value, '--json', cwd=workdir)
    assert r.returncode == 1  # the notebook raised, with the secret in its message
    res = json.loads(r.stdout)
    assert res['metrics']['token_len'] == len(value)  # the kernel did get the value
    assert value not in r.stdout + r.stderr
    hits = [str(p) for p in workdir.rglob('*') if p.is_file() and value.encode() in p.read_bytes()]
    assert hits == [], hits  # not in mlflow.db (params, tags), artifacts (notebook, HTML, log, error.txt) or local outputs
    run = _run_row(workdir, res['run_id'])
    assert run.data.params['api_token'] == '***'
    assert '***' in nbformat.writes(nbformat.read(res['output'], as_version=4))


@pytest.mark.parametrize('sig', ['SIGINT', 'SIGTERM'])
def test_interrupt_stops_the_job_and_fails_its_run(workdir, sig):
    import signal, subprocess, sys, time
    from pathlib import Path
    from conftest import clean_env
    nb = _notebook(workdir / 'long.ipynb', 'import time, mlops_nb\nmlops_nb.record("started", 1.0)\nprint("working", flush=True)',
                   'time.sleep(120)')
    exe = Path(sys.executable).parent / 'mlops-nb'
    p = subprocess.Popen([str(exe), 'run', str(nb)], cwd=workdir, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(r.data.metrics.get('started') for r in _runs(workdir)): time.sleep(0.5)
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert 'interrupted' in err
    [run] = _runs(workdir)
    assert run.info.status == 'FAILED' and run.data.tags['mlops_nb.failure_reason'] == 'interrupted'
    from mlflow import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    assert 'notebook/long.ipynb' in [a.path for a in c.list_artifacts(run.info.run_id, 'notebook')]  # partial notebook kept


def test_several_notebooks_in_one_command_and_bad_input_starts_none(workdir):
    a = _notebook(workdir / 'a.ipynb', 'import mlops_nb\nmlops_nb.record("a", n)')
    b = _notebook(workdir / 'b.ipynb', 'import mlops_nb\nmlops_nb.record("b", seed)', params='seed: int = 0')
    r = mlops_nb('run', a, b, '-p', 'n', 'x', cwd=workdir)
    assert r.returncode == 2 and 'a.ipynb' in r.stderr and _runs(workdir) == []
    r = mlops_nb('run', a, b, '-p', 'nope', '1', cwd=workdir)
    assert r.returncode == 2 and 'nope' in r.stderr and _runs(workdir) == []
    r = mlops_nb('run', a, b, '-p', 'n', '7', '-p', 'seed', '3', '--json', cwd=workdir)
    assert r.returncode == 0, r.stderr
    jobs = json.loads(r.stdout)['jobs']
    assert [j['metrics'].get('a', j['metrics'].get('b')) for j in jobs] == [7.0, 3.0]
    (workdir / 'batch.yaml').write_text(f"- {a}\n- notebook: {b}\n  parameters: {{seed: 11}}\n")
    r = mlops_nb('run', '--batch', 'batch.yaml', '--json', cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert [j['metrics'].get('a', j['metrics'].get('b')) for j in json.loads(r.stdout)['jobs']] == [3.0, 11.0]


def test_reproduce_reruns_with_the_same_metrics_and_refuses_changed_data(workdir):
    import pandas as pd
    pd.DataFrame({'x': range(40), 'target': [i % 2 for i in range(40)]}).to_csv(workdir / 'data.csv', index=False)
    nb = _notebook(workdir / 'fit.ipynb',
                   'import mlops_nb, numpy as np\nfrom mlops_nb.data import load_dataset\n'
                   'df = load_dataset(path)\nmlops_nb.log_dataset(df, "train", source=path)\n'
                   'rng = np.random.default_rng(seed)\nmlops_nb.record("score", float(df.x.mean() + rng.normal()))',
                   params='path: str = "data.csv"\nseed: int = 0')
    r = mlops_nb('run', nb, '-p', 'seed', '4', '--json', cwd=workdir)
    assert r.returncode == 0, r.stderr
    old = json.loads(r.stdout)['run_id']
    r = mlops_nb('reproduce', old, '--json', cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep['identical'] and rep['metrics']['score']['diff'] == 0
    assert _run_row(workdir, rep['run']['run_id']).data.tags['mlops_nb.reproduction_of'] == old
    (workdir / 'data.csv').write_text('x,target\n1,0\n2,1\n')
    n = len(_runs(workdir))
    r = mlops_nb('reproduce', old, cwd=workdir)
    assert r.returncode == 2 and 'changed' in r.stderr and 'data.csv' in r.stderr
    assert len(_runs(workdir)) == n  # refused before any run started


def test_a_notebook_for_another_kernel_runs_on_papermill_or_is_refused_before_starting(workdir):
    nb = _notebook(workdir / 'r.ipynb', 'x <- 1')
    doc = nbformat.read(nb, as_version=4)
    doc.metadata['kernelspec'] = {'name': 'ir', 'display_name': 'R', 'language': 'R'}
    nbformat.write(doc, nb)
    r = mlops_nb('run', nb, '--engine', 'fast', cwd=workdir)
    assert r.returncode == 2 and "engine 'fast' runs Python" in r.stderr
    r = mlops_nb('run', nb, cwd=workdir)  # the default goes to papermill, which needs the kernel: not installed here
    assert r.returncode == 2 and "kernel 'ir'" in r.stderr and 'python3' in r.stderr
    assert _runs(workdir) == []
