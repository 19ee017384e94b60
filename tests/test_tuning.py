"""Tuning sweeps end to end (`mlops-nb sweep --search tpe`): real notebook trials, a real SQLite store, Optuna's journal
kept with the parent run; TPE on the local pool with 2 workers, pruning from `mlops_nb.report`, a sweep killed with
SIGKILL and resumed, and the same on a Dask LocalCluster.

The fixture notebook scores a smooth function of two parameters with a known optimum (x=0.3, y=0.7) plus a little
seeded noise; it reports an intermediate value at each of `steps` steps, rising to its final score."""
import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import clean_env, mlops_nb
from test_sweeps import SWEEP_ID, SWEEP_INDEX, _client, _cmd, _sweep_runs, sweep

pytest.importorskip('optuna')

SPACE = ('--space', 'x=uniform:0:1', '--space', 'y=uniform:0:1')


def _quadratic(path):
    "A trial notebook: score = -((x-0.3)^2 + (y-0.7)^2) + noise; `steps` intermediate values through `mlops_nb.report`."
    nb = new_notebook(cells=[
        new_code_cell('x: float = 0.5  # first parameter\ny: float = 0.5  # second parameter\n'
                      'steps: int = 6  # intermediate values reported\npause: float = 0.0  # seconds each step takes\n'
                      'seed: int = 0  # seed of the noise', metadata={'tags': ['parameters']}),
        new_code_cell('import random, time, mlops_nb\nrng = random.Random(f"{x:.9f}/{y:.9f}/{seed}")\n'
                      'target = -((x - 0.3) ** 2 + (y - 0.7) ** 2)'),
        new_code_cell('for step in range(steps):\n    time.sleep(pause)\n'
                      '    mlops_nb.report(target - 0.2 * (steps - 1 - step) / steps + rng.gauss(0, 0.002), step)'),
        new_code_cell('mlops_nb.record("score", target + rng.gauss(0, 0.002))')])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)
    return path


def _children(c, sid, experiment='mlops_nb'):
    children, _ = _sweep_runs(c, experiment)
    return [r for r in children if r.data.tags[SWEEP_ID] == sid]


def _steps(c, runs) -> int:
    "Intermediate values recorded by `runs`, in all (what the trials computed)."
    return sum(len(c.get_metric_history(r.info.run_id, 'intermediate')) for r in runs)


def _json(r):
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout)


def test_tpe_sweep_on_two_workers_is_seeded_and_keeps_its_study(workdir):
    nb = _quadratic(workdir / 'quad.ipynb')
    res = _json(sweep(nb, '--search', 'tpe', '--trials', '6', *SPACE, '--metric', 'score', '--workers', '2', '--seed', '7',
                      '--json', cwd=workdir))
    c = _client(f"sqlite:///{workdir / 'mlflow.db'}")
    sid = res['sweep_run_id']
    kids = _children(c, sid)
    assert res['jobs'] == 6 and res['finished'] == 6 and res['failed'] == 0 and res['pruned'] == 0
    assert len(kids) == 6 and {r.info.status for r in kids} == {'FINISHED'}
    assert sorted(int(r.data.tags[SWEEP_INDEX]) for r in kids) == list(range(6))
    best = max(kids, key=lambda r: r.data.metrics['score'])
    assert res['best']['run_id'] == best.info.run_id == c.get_run(sid).data.tags['mlops_nb.best_run_id']
    parent = c.get_run(sid)
    assert parent.info.status == 'FINISHED' and parent.data.params['sweep.search'] == 'tpe'
    assert {'optimization_history.png', 'param_importances.png', 'study', 'sweep_summary.csv'} <= {a.path for a in c.list_artifacts(sid)}
    journal = workdir / '.mlops_nb' / 'studies' / f'{sid}.journal'
    assert journal.exists() and [a.path for a in c.list_artifacts(sid, 'study')] == [f'study/{journal.name}']
    # the same sweep and seed suggest the same first values (the first two are asked before any result is in)
    again = _json(sweep(nb, '--search', 'tpe', '--trials', '2', *SPACE, '--metric', 'score', '--workers', '2', '--seed', '7',
                        '--json', cwd=workdir))
    other = _json(sweep(nb, '--search', 'tpe', '--trials', '2', *SPACE, '--metric', 'score', '--workers', '2', '--seed', '8',
                        '--json', cwd=workdir))
    first = lambda r: sorted((row['index'], row['x'], row['y']) for row in r['runs'] if row['index'] < 2)
    assert first(again) == first(res)
    assert first(other) != first(res)


def test_pruned_sweep_computes_fewer_steps_and_fails_nothing(workdir):
    nb = _quadratic(workdir / 'quad.ipynb')
    args = ('--search', 'tpe', '--trials', '8', *SPACE, '--metric', 'score', '--workers', '2', '--seed', '0', '--json')
    full = _json(sweep(nb, *args, cwd=workdir))
    pruned = _json(sweep(nb, *args, '--prune', 'median', cwd=workdir))
    c = _client(f"sqlite:///{workdir / 'mlflow.db'}")
    a, b = _children(c, full['sweep_run_id']), _children(c, pruned['sweep_run_id'])
    assert len(a) == len(b) == 8
    assert _steps(c, a) == 8 * 6  # unpruned: every trial ran every step
    assert _steps(c, b) < _steps(c, a)
    assert {r.info.status for r in b} == {'FINISHED'}  # a pruned trial is not a failure
    stopped = [r for r in b if r.data.tags.get('mlops_nb.pruned') == 'true']
    assert stopped and pruned['pruned'] == len(stopped) and pruned['status'] == 'FINISHED'
    for r in stopped:
        assert 'score' not in r.data.metrics  # the notebook stopped at the report cell
        assert len(c.get_metric_history(r.info.run_id, 'intermediate')) == int(r.data.tags['mlops_nb.pruned_step']) + 1
        assert [f.path for f in c.list_artifacts(r.info.run_id, 'notebook')], 'the partial notebook is kept'
    assert pruned['best']['run_id'] not in {r.info.run_id for r in stopped}
    # outside a tuning sweep, report only records
    r = mlops_nb('run', nb, '-p', 'x', '0.3', '--json', cwd=workdir)
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads(r.stdout)
    assert run['status'] == 'FINISHED' and len(c.get_metric_history(run['run_id'], 'intermediate')) == 6


def test_killed_tuning_sweep_resumes_to_its_budget(workdir):
    nb = _quadratic(workdir / 'quad.ipynb')
    p = subprocess.Popen(_cmd(nb, '--search', 'tpe', '--trials', '6', *SPACE, '--metric', 'score', '--workers', '2',
                              '-p', 'pause', '0.4', '--json'),
                         cwd=workdir, env=clean_env(MLOPS_NB_WORKER='0'), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    db = workdir / 'mlflow.db'
    try:
        t0, done = time.time(), []
        while time.time() - t0 < 240 and p.poll() is None:
            if db.exists():
                kids, parents = _sweep_runs(_client(f"sqlite:///{db}"))
                done = [r for r in kids if r.info.status == 'FINISHED']
                if len(done) >= 2: break
            time.sleep(0.3)
        assert p.poll() is None and len(done) >= 2, 'the sweep ended before it could be killed'
        os.killpg(p.pid, signal.SIGKILL)  # no goodbye: the study file and the store are all that is left
        p.wait(30)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)
    c = _client(f"sqlite:///{db}")
    (sid, parent), = parents.items()
    before = {int(r.data.tags[SWEEP_INDEX]): r.info.run_id for r in _children(c, sid) if r.info.status == 'FINISHED'}
    assert 2 <= len(before) < 6
    res = _json(sweep('--resume', sid, '--workers', '2', '--json', cwd=workdir))
    assert res['sweep_run_id'] == sid and res['status'] == 'FINISHED'
    assert res['jobs'] == 6 and res['finished'] == 6  # N trials in all, counting those before the kill
    rows = {row['index']: row['run_id'] for row in res['runs']}
    assert all(rows.get(i) == rid for i, rid in before.items())  # what finished before the kill counts, and was not rerun
    kids = _children(c, sid)
    assert len({r.info.run_id for r in kids if r.info.status == 'FINISHED'}) == 6
    assert not [r for r in kids if r.info.status == 'RUNNING']
    assert c.get_run(sid).info.status == 'FINISHED'


CLUSTER = """
import sys, time
from distributed import LocalCluster
if __name__ == '__main__':
    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    print(cluster.scheduler_address, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    cluster.close()
"""


def test_tuning_sweep_with_pruning_on_dask(workdir):
    pytest.importorskip('distributed')
    nb = _quadratic(workdir / 'quad.ipynb')
    (workdir / 'cluster.py').write_text(CLUSTER)
    # a distributed.LocalCluster of 2 worker processes, in its own process started in `workdir` (where its workers keep
    # their executed notebooks)
    cl = subprocess.Popen([sys.executable, 'cluster.py'], cwd=workdir, env=clean_env(), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = cl.stdout.readline().strip()
        assert address.startswith('tcp://'), address
        res = _json(sweep(nb, '--search', 'tpe', '--trials', '4', *SPACE, '--metric', 'score', '--prune', 'median',
                          '--executor', 'dask', '--scheduler', address, '--seed', '1', '--json', cwd=workdir))
    finally:
        cl.stdin.close(); cl.wait(60)
    c = _client(f"sqlite:///{workdir / 'mlflow.db'}")
    kids = _children(c, res['sweep_run_id'])
    assert len(kids) == 4 and {r.info.status for r in kids} == {'FINISHED'} and res['finished'] == 4
    assert all(r.data.tags['mlops_nb.worker'].startswith('tcp://') for r in kids)  # ran on the Dask workers
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    journal = workdir / '.mlops_nb' / 'studies' / f"{res['sweep_run_id']}.journal"
    study = optuna.load_study(study_name=res['sweep_run_id'], storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len(study.trials) == 4
    # each trial's process, on a Dask worker, reached the study through report(): its intermediate values are there
    for r in kids:
        t = study.trials[int(r.data.tags[SWEEP_INDEX])]
        assert len(t.intermediate_values) == len(c.get_metric_history(r.info.run_id, 'intermediate')) >= 1
        assert (t.state.name == 'PRUNED') == (r.data.tags.get('mlops_nb.pruned') == 'true')


def test_pipeline_grid_step_can_tune(workdir):
    nb = _quadratic(workdir / 'quad.ipynb')
    (workdir / 'tune.yaml').write_text(f"""steps:
  tune:
    notebook: {nb.name}
    search: tpe
    trials: 3
    space: {{x: "uniform:0:1", y: "uniform:0:1"}}
    parameters: {{steps: 2}}
    metric: score
""")
    p = mlops_nb('pipeline', 'run', 'tune.yaml', '--json', cwd=workdir)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    step = json.loads(p.stdout)['steps']['tune']
    c = _client(f"sqlite:///{workdir / 'mlflow.db'}")
    parent = c.get_run(step['run_id'])
    assert parent.data.params['sweep.search'] == 'tpe' and parent.data.tags['mlops_nb.sweep'] == 'parent'
    kids = _children(c, step['run_id'])
    assert len(kids) == 3 and {r.info.status for r in kids} == {'FINISHED'}
    assert parent.data.tags['mlops_nb.best_run_id'] == max(kids, key=lambda r: r.data.metrics['score']).info.run_id
