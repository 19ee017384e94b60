"""`sqlstore` against MLflow itself: a run written by SQL reads back, through `MlflowClient`, as the same run written by MLflow;
the schema it writes is the installed MLflow's; any other store is left to MLflow."""
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env, mlops_nb
from mlops_nb.core import TrackingError, get_settings
from mlops_nb.sqlstore import SCHEMA, SqlStore, open_store
from mlops_nb.tracking import client, create_run, experiment_id


@pytest.fixture
def made(workdir):
    "Settings on a store MLflow made (with its experiment), and the `SqlStore` on it."
    s = get_settings(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}", artifact_root=str(workdir / 'mlartifacts'), experiment='e')
    experiment_id(s)
    return s, open_store(s)


def test_schema_is_the_installed_mlflows_head():
    "An MLflow upgrade that moves the schema fails here, not in a user's store: check the new tables, then move SCHEMA."
    from alembic.script import ScriptDirectory
    import mlflow.store.db_migrations as m
    assert ScriptDirectory(os.path.dirname(m.__file__)).get_current_head() == SCHEMA


def _record(run, folder: Path):
    "The same records, whichever client writes them: params (non-ASCII, quotes, multi-line), metric steps, NaN and inf, tags, files."
    for k, v in {'rows': 300_000, 'note': 'déjà vu "quoted"\nsecond line', 'empty': ''}.items(): run.batch.param(k, v)
    for step, v in enumerate([0.5, 0.25, float('nan'), float('inf')]): run.batch.metric('loss', v, step)
    run.batch.metric('one', 1.0)
    run.batch.tag('mlops_nb.job', 'predict'); run.batch.tag('note', 'ünïcode\n"q"')
    run.flush()
    (folder / 'sub').mkdir(parents=True, exist_ok=True)
    (folder / 'a.txt').write_text('a'); (folder / 'sub' / 'b.txt').write_text('b')
    run.log_artifact(folder / 'a.txt', 'files')
    run.log_artifact(folder, 'tree')
    run.log_text('résumé\n', 'reports/summary.txt')
    run.end('FAILED', reason='error', error=ValueError('bad "row" 3'))


def _seen(c, run_id: str) -> dict:
    "What MLflow's client reads of a run, without what differs between any two runs (ids, times, paths)."
    r = c.get_run(run_id)
    def walk(p=None):
        out = []
        for a in c.list_artifacts(run_id, p):
            out += walk(a.path) if a.is_dir else [(a.path, a.file_size)]
        return sorted(out)
    hist = [(m.step, m.value) for m in c.get_metric_history(run_id, 'loss')]
    skip = {'mlops_nb.git_commit', 'mlops_nb.git_dirty', 'mlops_nb.git_branch', 'mlops_nb.git_remote'}
    return dict(status=r.info.status, run_name=r.info.run_name, lifecycle=r.info.lifecycle_stage, user=r.info.user_id,
                ended=r.info.end_time >= r.info.start_time, uri_tail=r.info.artifact_uri.rsplit('/', 1)[-1],
                uri_head=r.info.artifact_uri.rsplit('/', 3)[0], params=r.data.params, metrics=r.data.metrics,
                tags={k: v for k, v in r.data.tags.items() if k not in skip}, history=hist,
                files=[(p, n) for p, n in walk() if p != 'environment.txt'], environment='environment.txt' in dict(walk()),
                found=run_id in [x.info.run_id for x in c.search_runs([r.info.experiment_id], "tags.`mlops_nb.job` = 'predict'")])


def test_a_run_by_sql_reads_back_as_the_same_run_by_mlflow(made, workdir):
    s, store = made
    c = client(s)
    by = {}
    for name, mc in (('mlflow', None), ('sql', store)):
        run = create_run(s, run_name='same', params={'seed': 0}, tags={'mlops_nb.kind': 'test'}, start_time=1_800_000_000,
                         mlflow_client=mc)
        _record(run, workdir / name)
        by[name] = _seen(c, run.run_id)
    nan_last = lambda d: {**d, 'metrics': {k: repr(v) for k, v in d['metrics'].items()}, 'history': [(s, repr(v)) for s, v in d['history']]}
    assert nan_last(by['sql']) == nan_last(by['mlflow'])
    assert by['sql']['found'] and by['sql']['environment'] and by['sql']['status'] == 'FAILED'


def test_what_mlflow_refuses_is_refused(made):
    s, store = made
    run = create_run(s, params={'a': 1}, mlflow_client=store)
    with pytest.raises(TrackingError, match="Changing param values is not allowed"):
        store.log_batch(run.run_id, params=[store.entities[1]('a', '2')])
    store.log_batch(run.run_id, params=[store.entities[1]('a', '1')])  # the same value again is fine
    with pytest.raises(TrackingError, match='Invalid tag name'): store.set_tag(run.run_id, 'bad\nname', 'x')
    with pytest.raises(TrackingError, match='at most 6000'): store.log_batch(run.run_id, params=[store.entities[1]('long', 'x' * 6001)])
    for out in ('../escape.txt', 'a/..', '/abs.txt'):
        with pytest.raises(TrackingError, match='Invalid artifact path'): store.log_text(run.run_id, 'x', out)
    with pytest.raises(TrackingError, match='Invalid artifact path'): store.log_artifact(run.run_id, __file__, 'a/../..')
    client(s).delete_run(run.run_id)
    with pytest.raises(TrackingError, match='is deleted'): store.set_tag(run.run_id, 'k', 'v')


def test_any_other_store_is_left_to_mlflow(made, workdir, monkeypatch):
    s, _ = made
    other = workdir / 'other.db'
    shutil.copyfile(workdir / 'mlflow.db', other)
    with sqlite3.connect(other) as con: con.execute("UPDATE alembic_version SET version_num = 'abc123'")
    assert open_store(get_settings(tracking_uri=f'sqlite:///{other}')) is None  # another schema revision
    assert open_store(get_settings(tracking_uri=f"sqlite:///{workdir / 'none.db'}")) is None  # not made yet
    assert open_store(get_settings(tracking_uri='postgresql://127.0.0.1/test')) is None
    assert open_store(get_settings(tracking_uri=s.tracking_uri, registry_uri=f'sqlite:///{other}')) is None  # a registry elsewhere
    (workdir / 'junk.db').write_text('not a database')
    assert open_store(get_settings(tracking_uri=f"sqlite:///{workdir / 'junk.db'}")) is None
    monkeypatch.setenv('MLOPS_NB_SQL_STORE', 'off')
    assert open_store(s) is None


def test_a_lost_run_is_still_marked_by_a_predict_on_the_embedded_store(workdir):
    "SQL only counts RUNNING job runs; when there is one, MLflow looks at it as before and marks it lost."
    s = get_settings(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment_id(s)
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True).stdout.strip()
    run = create_run(s, tags={'mlops_nb.driver_pid': dead, 'mlops_nb.host': __import__('socket').gethostname()},
                     mlflow_client=open_store(s))
    assert open_store(s).running_job_runs() == 1
    r = mlops_nb('predict', 'models:/none@champion', 'in.csv', '--out', 'out.parquet', cwd=workdir, env=clean_env())
    assert f'marked run {run.run_id} FAILED (lost)' in r.stderr, r.stderr[-2000:]
    assert client(s).get_run(run.run_id).info.status == 'FAILED' and open_store(s).running_job_runs() == 0


def test_a_store_held_locked_is_a_clear_error_and_nothing_half_written(made, monkeypatch):
    "Another program holding the file past the wait: a TrackingError naming the file; the batch wrote nothing (one transaction)."
    import mlops_nb.sqlstore as sq
    s, store = made
    run = create_run(s, mlflow_client=store)
    monkeypatch.setattr(sq, 'BUSY_WAIT', 0.2)
    holder = sqlite3.connect(str(store.db), isolation_level=None)
    holder.execute('BEGIN EXCLUSIVE')
    try:
        with pytest.raises(TrackingError, match=r'refused a write: OperationalError: database is locked') as e:
            store.log_batch(run.run_id, metrics=[store.entities[0]('m', 1.0, 0, 0)], params=[store.entities[1]('p', 'v')])
        assert str(store.db) in str(e.value)
        with pytest.raises(TrackingError, match=r'could not be read: OperationalError: database is locked'): store.get_run(run.run_id)
    finally: holder.execute('ROLLBACK'); holder.close()
    d = store.get_run(run.run_id).data
    assert 'm' not in d.metrics and 'p' not in d.params
    store.log_batch(run.run_id, params=[store.entities[1]('p', 'v')])  # free again: it writes
    assert store.get_run(run.run_id).data.params['p'] == 'v'
    with pytest.raises(TrackingError, match="Run .nope. does not exist"): store.get_run('nope')
