"""A cold `mlops-nb run` starts the job before its run exists (MLflow is imported meanwhile): the guarantees still hold."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from conftest import clean_env, mlops_nb, wait_for


def _notebook(path, *cells, params='n: int = 3\napi_token: Secret = ""'):
    nb = new_notebook(cells=[new_code_cell('from mlops_nb import Secret'), new_code_cell(params, metadata={'tags': ['parameters']}),
                             *map(new_code_cell, cells)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)
    return path


def _client(d):
    from mlops_nb.core import get_settings
    from mlops_nb.tracking import client
    return client(get_settings(tracking_uri=f"sqlite:///{d / 'mlflow.db'}"))


def _store(d):
    "Make the project's store first (a store not made yet is made before the job starts): the command then overlaps."
    _client(d)


def _runs(d):
    if not (d / 'mlflow.db').exists(): return []
    c = _client(d)
    return [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]


def test_cold_run_is_dated_from_the_job_start_and_keeps_every_record(workdir):
    "No worker running: the run's start is the job's (before its first cell), what it recorded early is all there, no secret anywhere."
    _store(workdir)
    nb = _notebook(workdir / 'early.ipynb', 'import mlops_nb, time\nmlops_nb.record("t_cell", time.time())\n'
                   'for i in range(n): mlops_nb.record("loss", 1 / (i + 1))\nmlops_nb.record("token_seen", api_token)\nprint(api_token)')
    launched = time.time()
    r = mlops_nb('run', nb, '-p', 'n', '3', '-p', 'api_token', 'tok-c0ld-77f1', '--json', cwd=workdir)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    c = _client(workdir)
    run = c.get_run(res['run_id'])
    t_cell = run.data.metrics['t_cell']
    assert launched * 1000 <= run.info.start_time <= t_cell * 1000  # dated from the job's start, not from when MLflow was ready
    assert [m.value for m in c.get_metric_history(res['run_id'], 'loss')] == [1, 0.5, 1 / 3]
    assert run.data.params['api_token'] == '***' and run.data.params['token_seen'] == '***'
    assert {a.path for a in c.list_artifacts(res['run_id'], 'notebook')} == {'notebook/early.ipynb', 'notebook/early.html'}  # the log is empty
    out = Path(res['output'])
    assert out.parent.name == res['run_id'] and sorted(p.name for p in out.parent.iterdir()) == ['early.html', 'early.ipynb', 'early.log']
    leaks = [p for p in workdir.rglob('*') if p.is_file() and b'tok-c0ld-77f1' in p.read_bytes()]
    assert leaks == [] and 'tok-c0ld-77f1' not in r.stdout + r.stderr
    assert all(r_.info.status == 'FINISHED' for r_ in _runs(workdir))


def test_cold_job_that_dies_at_once_is_failed_with_its_records_and_partial_notebook(workdir):
    "The job dies in its first cell, most likely before its run exists: still one run, FAILED, the cell marked, the record kept."
    _store(workdir)
    nb = _notebook(workdir / 'die.ipynb', 'import os, signal, mlops_nb\nmlops_nb.record("before", 1.0)\nprint("about to die")',
                   'os.kill(os.getpid(), signal.SIGKILL)', 'print("never")')
    r = mlops_nb('run', nb, '--json', cwd=workdir, timeout=300)
    assert r.returncode == 1, r.stderr
    res = json.loads(r.stdout)
    assert res['error']['reason'] == 'kernel_died' and res['error']['cell'] == 3  # Secret import, params, record, kill (no -p: no injected cell)
    run = _client(workdir).get_run(res['run_id'])
    assert run.info.status == 'FAILED' and run.data.metrics['before'] == 1.0
    partial = nbformat.read(res['output'], as_version=4)
    failed = [c.source for c in partial.cells if c.get('metadata', {}).get('papermill', {}).get('status') == 'failed']
    assert 'about to die' in nbformat.writes(partial) and failed == ['os.kill(os.getpid(), signal.SIGKILL)']
    assert [x.info.status for x in _runs(workdir)] == ['FAILED']


def test_failing_cell_is_recorded_with_the_cell(workdir):
    _store(workdir)
    nb = _notebook(workdir / 'bad.ipynb', 'x = 1', 'raise ValueError(f"bad value {n}")', 'print("never")')
    r = mlops_nb('run', nb, '--json', cwd=workdir)
    assert r.returncode == 1
    res = json.loads(r.stdout)
    run = _client(workdir).get_run(res['run_id'])
    assert run.info.status == 'FAILED' and run.data.tags['mlops_nb.failure_cell'] == '3' and run.data.tags['mlops_nb.failure_ename'] == 'ValueError'
    assert 'bad value 3' in run.data.tags['mlops_nb.failure_evalue']


def test_driver_killed_while_the_run_is_made_still_ends_a_run(workdir):
    "The command dies while it imports MLflow or creates the run: the job stops itself and its run ends FAILED (driver_lost)."
    _store(workdir)
    nb = _notebook(workdir / 'slow.ipynb', f'open({str(workdir / "started")!r}, "w").write("x")\nimport time\ntime.sleep(600)')
    exe = Path(sys.executable).parent / 'mlops-nb'
    p = subprocess.Popen([str(exe), 'run', '--no-worker', str(nb)], cwd=workdir, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: (workdir / 'started').exists() or p.poll() is not None, 'the job to start')
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGKILL); p.wait()
    run = wait_for(lambda: next((x for x in _runs(workdir) if x.info.status != 'RUNNING'), None), 'the run to end')
    assert run.info.status == 'FAILED' and run.data.tags['mlops_nb.failure_reason'] == 'driver_lost'
    assert len(_runs(workdir)) == 1 and 'notebook/slow.ipynb' in {a.path for a in _client(workdir).list_artifacts(run.info.run_id, 'notebook')}
