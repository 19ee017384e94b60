"""Sweeps end to end with real processes: a 32-job sweep on SQLite, the same sweep on a Dask LocalCluster against an
`mlflow server` on PostgreSQL, a Dask worker killed mid-sweep, and resume after Ctrl-C."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import clean_env

SWEEP_ID, SWEEP_INDEX = 'mlops_nb.sweep_id', 'mlops_nb.sweep_index'


def _cmd(*args): return [str(Path(sys.executable).parent / 'mlops-nb'), 'sweep', *map(str, args)]


def sweep(*args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(*args), cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)


def _notebook(path):
    "A job that records a metric computed from its parameters; `sleep` makes it last."
    nb = new_notebook(cells=[
        new_code_cell('a: int = 1  # a number\nb: float = 0.5  # a factor\nsleep: float = 0.0  # seconds the job takes',
                      metadata={'tags': ['parameters']}),
        new_code_cell('import time, mlops_nb\ntime.sleep(sleep)\nmlops_nb.record("score", a * b)\nmlops_nb.record("neg_a", -a)')])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)
    return path


def _client(uri):
    "A client on the store; on SQLite through mlops_nb, which creates a fresh store once even while the sweep does too."
    from mlops_nb.core import get_settings
    from mlops_nb.tracking import client
    return client(get_settings(tracking_uri=uri))


def _sweep_runs(c, experiment='mlops_nb'):
    "Every child run of any sweep in the experiment, and the parents by id."
    exp = c.get_experiment_by_name(experiment)
    if exp is None: return [], {}
    runs = c.search_runs([exp.experiment_id], max_results=5000)
    return [r for r in runs if SWEEP_ID in r.data.tags], {r.info.run_id: r for r in runs if r.data.tags.get('mlops_nb.sweep') == 'parent'}


def _check_complete_sweep(c, res: dict, combos: list[tuple], tmp: Path):
    "Every combination has exactly one FINISHED child run with its metric; the parent has the summary and the best run."
    sid = res['sweep_run_id']
    children, parents = _sweep_runs(c)
    children = [r for r in children if r.data.tags[SWEEP_ID] == sid]
    assert len(children) == len(combos), [(r.data.tags[SWEEP_INDEX], r.info.status) for r in children]
    assert sorted(int(r.data.tags[SWEEP_INDEX]) for r in children) == list(range(len(combos)))
    for r in children:
        a, b = combos[int(r.data.tags[SWEEP_INDEX])]
        assert r.info.status == 'FINISHED', (r.info.run_id, r.data.tags.get('mlops_nb.error'))
        assert r.data.tags['mlflow.parentRunId'] == sid
        assert (r.data.params['a'], float(r.data.params['b'])) == (str(a), b)
        assert r.data.metrics['score'] == a * b and r.data.metrics['neg_a'] == -a
        assert [f.path for f in c.list_artifacts(r.info.run_id, 'notebook')], f"run {r.info.run_id} lost its executed notebook"
    parent = c.get_run(sid)
    assert parent.info.status == 'FINISHED'
    best = max(children, key=lambda r: r.data.metrics['score'])
    assert parent.data.tags['mlops_nb.best_run_id'] == best.info.run_id == res['best']['run_id']
    assert parent.data.metrics['best_score'] == max(a * b for a, b in combos)
    for r in children:  # links both ways
        assert parent.data.tags[f"mlops_nb.sweep_run.{r.data.tags[SWEEP_INDEX]}"] == r.info.run_id
    rows = list(csv.DictReader(open(c.download_artifacts(sid, 'sweep_summary.csv', str(tmp)))))
    assert len(rows) == len(combos) and {r['status'] for r in rows} == {'FINISHED'}
    assert {r['run_id'] for r in rows} == {r.info.run_id for r in children}
    assert all(float(r['metric.score']) == int(r['a']) * float(r['b']) for r in rows)


GRID32 = ['--grid', 'a=1,2,3,4,5,6,7,8', '--grid', 'b=0.5,1,2,4']
COMBOS32 = [(a, b) for a in range(1, 9) for b in (0.5, 1.0, 2.0, 4.0)]


def test_32_job_sweep_on_sqlite_loses_nothing(workdir):
    nb = _notebook(workdir / 'job.ipynb')
    r = sweep(nb, *GRID32, '--metric', 'score', '--maximize', '--json', cwd=workdir)
    assert 'database is locked' not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res['jobs'] == 32 and res['finished'] == 32 and res['failed'] == 0
    _check_complete_sweep(_client(f"sqlite:///{workdir / 'mlflow.db'}"), res, COMBOS32, workdir)
    events = [json.loads(line) for line in r.stderr.splitlines() if line.startswith('{"event"')]
    assert len(events) == 32 and events[-1]['done'] == 32  # progress for programs


def test_bad_combination_exits_2_and_starts_nothing(workdir):
    nb = _notebook(workdir / 'job.ipynb')
    r = sweep(nb, '--grid', 'a=1,2,x', '--grid', 'b=1', cwd=workdir)
    assert r.returncode == 2
    assert 'Combination 3 of 3' in r.stderr and "'a'" in r.stderr and 'job.ipynb' in r.stderr and '"x"' in r.stderr
    assert not (workdir / 'mlflow.db').exists() or _sweep_runs(_client(f"sqlite:///{workdir / 'mlflow.db'}")) == ([], {})


def test_failed_job_does_not_stop_the_sweep_and_exits_1(workdir):
    nb = _notebook(workdir / 'job.ipynb')
    r = sweep(nb, '--random', '4', '--space', 'a=int:1:3', '--space', 'b=choice:1,oops', '--seed', '3', cwd=workdir)
    # 'oops' is not a float: the schema refuses it before anything starts
    assert r.returncode == 2 and "'b'" in r.stderr
    bad = workdir / 'bad.ipynb'
    nbj = nbformat.read(nb, as_version=4)
    nbj.cells.append(new_code_cell('if a == 2: raise ValueError("a must not be 2")'))
    nbformat.write(nbj, bad)
    r = sweep(bad, '--grid', 'a=1,2,3', '--workers', '2', cwd=workdir)
    assert r.returncode == 1, r.stderr[-2000:]
    assert 'failed:' in r.stdout and '1 failed' in r.stdout and '--resume' in r.stdout
    children, _ = _sweep_runs(_client(f"sqlite:///{workdir / 'mlflow.db'}"))
    st = {int(c.data.tags[SWEEP_INDEX]): c.info.status for c in children}
    assert st == {0: 'FINISHED', 1: 'FAILED', 2: 'FINISHED'}


# ---------------------------------------------------------------- Dask


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture
def dask_cluster(workdir, monkeypatch):
    "A real distributed.LocalCluster: 2 worker processes, 1 thread each, started in `workdir`."
    distributed = pytest.importorskip('distributed')
    monkeypatch.chdir(workdir)  # workers keep their executed notebooks under their working directory
    for k in [k for k in os.environ if k.startswith(('MLFLOW_', 'MLOPS_NB_'))]: monkeypatch.delenv(k)
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    client = distributed.Client(cluster)
    try: yield cluster, client
    finally:
        client.close(); cluster.close()


@pytest.fixture
def pg_mlflow_server(tmp_path):
    "An `mlflow server` on a fresh PostgreSQL database (dropped afterwards) with a shared artifact directory."
    psycopg2 = pytest.importorskip('psycopg2', reason='psycopg2 is needed by mlflow server on PostgreSQL (pip install psycopg2-binary)')
    try: admin = psycopg2.connect(host='127.0.0.1', port=5432, user='postgres', dbname='postgres', connect_timeout=5)
    except psycopg2.OperationalError as e: pytest.skip(f'PostgreSQL is not reachable on 127.0.0.1:5432: {e}')
    admin.autocommit = True
    db = f'mlops_nb_sweep_{uuid.uuid4().hex[:10]}'
    admin.cursor().execute(f'CREATE DATABASE {db}')
    arts, port = tmp_path / 'shared-artifacts', _free_port()
    arts.mkdir()
    log = open(tmp_path / 'mlflow-server.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'mlflow', 'server', '--backend-store-uri', f'postgresql+psycopg2://postgres@127.0.0.1:5432/{db}',
                             '--artifacts-destination', str(arts), '--host', '127.0.0.1', '--port', str(port), '--workers', '2'],
                            env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.time() + 300  # generous: a shared CI machine under load starts a server slowly
        while time.time() < deadline and proc.poll() is None:
            try:
                if urllib.request.urlopen(f'{url}/health', timeout=2).status == 200: break
            except OSError: time.sleep(0.5)
        try: up = proc.poll() is None and urllib.request.urlopen(f'{url}/health', timeout=5).status == 200
        except OSError: up = False
        if not up:
            raise RuntimeError(f'mlflow server did not start: {(tmp_path / "mlflow-server.log").read_text()[-3000:]}')
        yield url, arts
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS {db} WITH (FORCE)')
        admin.close()


def test_32_job_sweep_on_dask_with_postgresql_server(workdir, dask_cluster, pg_mlflow_server):
    cluster, _ = dask_cluster
    url, arts = pg_mlflow_server
    nb = _notebook(workdir / 'job.ipynb')
    # A team store: runs in PostgreSQL through the server, artifacts proxied by the server into its shared directory.
    env = clean_env(MLFLOW_TRACKING_URI=url, MLOPS_NB_ARTIFACT_ROOT='mlflow-artifacts:///team')
    r = sweep(nb, *GRID32, '--metric', 'score', '--executor', 'dask', '--scheduler', cluster.scheduler_address, '--json',
              cwd=workdir, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res['finished'] == 32 and res['tracking_uri'] == url
    c = _client(url)
    _check_complete_sweep(c, res, COMBOS32, workdir)
    workers = {ch.data.tags['mlops_nb.worker'] for ch in _sweep_runs(c)[0]}
    assert workers <= set(cluster.scheduler_info['workers']) and len(workers) == 2, workers  # both Dask workers ran jobs
    stored = list(arts.rglob('job.ipynb'))
    assert len(stored) == 32, len(stored)  # every executed notebook is in the shared artifact directory
    assert not (workdir / 'mlflow.db').exists()  # nothing went to a local store


class _Events:
    "The sweep's progress events (JSON lines on stderr), read as they come; `text` is all of stderr."
    def __init__(self, proc):
        import threading
        self.lines = []
        self.t = threading.Thread(target=lambda: self.lines.extend(iter(proc.stderr.readline, '')), daemon=True)
        self.t.start()
    def jobs(self): return [json.loads(x) for x in list(self.lines) if x.startswith('{"event"')]
    @property
    def text(self): self.t.join(30); return ''.join(self.lines)


def _wait_for(cond, proc, timeout=240, every=0.5):
    "Poll `cond` while the sweep `proc` runs."
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f'the sweep ended (exit {proc.returncode}) before the condition was met')
        v = cond()
        if v: return v
        time.sleep(every)
    raise AssertionError(f'condition not met within {timeout}s')


def test_killed_dask_worker_loses_and_duplicates_nothing(workdir, dask_cluster):
    cluster, client = dask_cluster
    nb = _notebook(workdir / 'job.ipynb')
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    pids = client.run(os.getpid)  # worker address -> pid
    p = subprocess.Popen(_cmd(nb, '--grid', 'a=1,2,3,4,5,6', '-p', 'sleep', '4', '--executor', 'dask',
                              '--scheduler', cluster.scheduler_address, '--json'),
                         cwd=workdir, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ev = _Events(p)
    try:
        _wait_for(ev.jobs, p)  # a job has finished: the store exists
        c = _client(uri)
        def running():
            children, _ = _sweep_runs(c)
            return next((r for r in children if r.info.status == 'RUNNING' and r.data.tags.get('mlops_nb.worker') in pids), None)
        victim = _wait_for(running, p)
        os.kill(pids[victim.data.tags['mlops_nb.worker']], signal.SIGKILL)
        out = p.stdout.read(); p.wait(400)
        err = ev.text
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode in (0, 1), err[-3000:]
    res = json.loads(out)
    children, _ = _sweep_runs(c)
    assert not [r.info.run_id for r in children if r.info.status == 'RUNNING'], 'a run was left RUNNING'
    lost = c.get_run(victim.info.run_id)
    # the sweep marks it `worker_lost`, unless the job noticed its driver's death first and ended it `driver_lost`
    assert lost.info.status == 'FAILED' and lost.data.tags['mlops_nb.failure_reason'] in ('worker_lost', 'driver_lost')
    by = {}
    for r in children: by.setdefault(int(r.data.tags[SWEEP_INDEX]), []).append(r)
    assert sorted(by) == list(range(6))
    summary = {row['index']: row for row in res['runs']}
    for i, runs in by.items():
        finished = [r for r in runs if r.info.status == 'FINISHED']
        assert len(finished) <= 1, f'combination {i} FINISHED twice'
        if finished: assert summary[i]['status'] == 'FINISHED' and summary[i]['run_id'] == finished[0].info.run_id
        else: assert summary[i]['status'] == 'FAILED'
    victim_index = int(victim.data.tags[SWEEP_INDEX])
    assert len(by[victim_index]) >= 2 or summary[victim_index]['status'] == 'FAILED'  # retried elsewhere, or reported


# ---------------------------------------------------------------- Ctrl-C and resume


def test_interrupt_marks_unfinished_runs_failed_and_resume_runs_only_the_rest(workdir):
    nb = _notebook(workdir / 'job.ipynb')
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    p = subprocess.Popen(_cmd(nb, '--grid', 'a=1,2,3,4,5,6,7,8', '-p', 'sleep', '2', '--workers', '2', '--metric', 'score', '--json',
                              '--experiment', 'tuning'),
                         cwd=workdir, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ev = _Events(p)
    try:
        _wait_for(lambda: len(ev.jobs()) >= 2, p)
        p.send_signal(signal.SIGINT)
        p.stdout.read(); p.wait(180)
        err = ev.text
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 130, err[-3000:]
    assert '--resume' in err
    c = _client(uri)
    children, parents = _sweep_runs(c, 'tuning')
    (sid, parent), = parents.items()
    assert parent.info.status in ('KILLED', 'FAILED') and parent.data.tags['mlops_nb.failure_reason'] == 'interrupted'
    assert not [r for r in children if r.info.status == 'RUNNING']
    failed = [r for r in children if r.info.status == 'FAILED']
    assert all(r.data.tags.get('mlops_nb.failure_reason') == 'interrupted' for r in failed), \
        [r.data.tags.get('mlops_nb.failure_reason') for r in failed]
    before = {int(r.data.tags[SWEEP_INDEX]): r.info.run_id for r in children if r.info.status == 'FINISHED'}
    assert 2 <= len(before) < 8

    r = sweep('--resume', sid, '--workers', '2', '--json', cwd=workdir)  # no --experiment: the sweep's own
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res['sweep_run_id'] == sid and res['finished'] == 8
    children, parents = _sweep_runs(c, 'tuning')
    assert list(parents) == [sid] and _sweep_runs(c) == ([], {}) and c.get_run(sid).info.status == 'FINISHED'
    finished = {}
    for ch in children:
        if ch.info.status == 'FINISHED': finished.setdefault(int(ch.data.tags[SWEEP_INDEX]), []).append(ch.info.run_id)
    assert sorted(finished) == list(range(8)) and all(len(v) == 1 for v in finished.values())
    assert all(finished[i] == [rid] for i, rid in before.items())  # what had finished was not run again
    assert len([ch for ch in children if ch.info.status == 'FINISHED']) == 8
    assert all(row['metric.score'] == row['a'] * 0.5 for row in res['runs'])
