"""Batch scoring from outside: `mlops-nb predict` as a subprocess on generated files, a real MLflow store and a real Dask LocalCluster."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from batch_helpers import FEATURES, make_rows, train_and_register
from conftest import clean_env, mlops_nb

N = 1_000_000
M = 300_000
URI = 'models:/batchdemo@champion'


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "A registered classifier, a 1,000,000-row Parquet input (50 row groups), a 300,000-row one (60 row groups), and the model's own predictions on them."
    d = tmp_path_factory.mktemp('batch')
    est, schema, s = train_and_register(d, model='random_forest', n_estimators=10, max_depth=6)
    rows = make_rows(N)
    rows.to_parquet(d / 'big.parquet', row_group_size=20_000)
    expected = pd.DataFrame({'id': rows['id'], 'prediction': est.predict(rows[schema.features])})
    mid = rows.head(M)
    mid.to_parquet(d / 'mid.parquet', row_group_size=5_000)  # many small partitions: time to kill or interrupt mid-run
    return dict(dir=d, model=est, schema=schema, settings=s, expected=expected, expected_mid=expected.head(M))


CACHE = tempfile.mkdtemp(prefix='mlops_nb_compiled_')  # this module's compiled-model cache


def _env():
    return clean_env(MLFLOW_DISABLE_TELEMETRY='true', MLOPS_NB_CACHE=CACHE)


def _predict(setup, *args, **kw):
    return mlops_nb('predict', *args, cwd=setup['dir'], env=_env(), **kw)


def _runs(setup):
    from mlflow import MlflowClient
    c = MlflowClient(tracking_uri=setup['settings'].tracking_uri)
    return c, c.search_runs([e.experiment_id for e in c.search_experiments()], "tags.`mlops_nb.job` = 'predict'")


def test_million_rows_equal_the_models_own_predict(setup):
    r = _predict(setup, URI, 'big.parquet', '--out', 'scored.parquet', '--keep', 'id', '--json')
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    got = pd.read_parquet(setup['dir'] / 'scored.parquet')
    pd.testing.assert_frame_equal(got, setup['expected'], check_dtype=False)
    assert (out['rows_in'], out['rows_out'], out['rows_rejected']) == (N, N, 0)
    c, _ = _runs(setup)
    run = c.get_run(out['run_id'])
    assert run.info.status == 'FINISHED'
    m, p = run.data.metrics, run.data.params
    assert (m['rows_in'], m['partitions'], m['model_loads']) == (N, 50, 1)
    assert abs(m['prediction_share.1'] - setup['expected']['prediction'].mean()) < 1e-9
    assert (p['model.name'], p['model.version']) == ('batchdemo', '1') and len(p['input_sha256']) == 64
    assert p['scoring_engine'] == 'sklearn' and p['scoring_engine_note']  # a forest has no compiled form here: the run says why
    arts = {a.path for a in c.list_artifacts(out['run_id'])} | {a.path for a in c.list_artifacts(out['run_id'], 'notebook')}
    assert {'predictions_histogram.svg', 'notebook/predict.ipynb', 'notebook/predict.html'} <= arts
    assert not (setup['dir'] / 'scored.parquet.parts').exists()


def test_bad_rows_go_to_rejects_with_reasons(setup):
    d = setup['dir']
    bad = make_rows(50, seed=7).astype({'x0': object, 'n_items': object})
    bad.loc[3, 'x0'] = 'twelve'
    bad.loc[5, 'n_items'] = 2.5
    bad.loc[8, 'segment'] = None
    bad.loc[9, 'x1'] = None
    bad.to_csv(d / 'bad.csv', index=False)
    r = _predict(setup, URI, 'bad.csv', '--out', 'bad_scored.csv', '--keep', 'id', '--log-dir', 'reqlog')
    assert r.returncode == 0, r.stderr[-3000:]
    assert '4 rejected (reasons in' in r.stdout
    rej = pd.read_csv(d / 'bad_scored.rejects.csv')
    assert rej[['row', 'reason']].values.tolist() == [
        [3, 'x0: not a number'], [5, 'n_items: not a whole number'],
        [8, 'segment: missing (no missing values in training)'], [9, 'x1: missing (no missing values in training)']]
    assert rej.loc[0, 'x0'] == 'twelve' and rej['id'].tolist() == [3, 5, 8, 9]
    got = pd.read_csv(d / 'bad_scored.csv')
    good = make_rows(50, seed=7).drop(index=[3, 5, 8, 9])
    assert got['id'].tolist() == good['id'].tolist()
    assert got['prediction'].tolist() == setup['model'].predict(good[setup['schema'].features]).tolist()
    from mlops_nb.reqlog import read_log, split_log  # the monitor's reader
    feats, preds, meta = split_log(read_log(d / 'reqlog'))
    assert len(feats) == 46 and set(meta['source']) == {'batch'} and set(meta['model_version']) == {'1'}
    assert preds['prediction'].tolist() == got['prediction'].tolist()
    # --on-bad-rows fail: the job runs and fails, naming the row
    r = _predict(setup, URI, 'bad.csv', '--out', 'bad_fail.parquet', '--on-bad-rows', 'fail')
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'Input row 3 of' in r.stdout and 'x0: not a number' in r.stdout


def test_missing_column_is_refused_before_any_run(setup):
    d = setup['dir']
    make_rows(10).drop(columns=['x2']).to_csv(d / 'short.csv', index=False)
    before = len(_runs(setup)[1])
    r = _predict(setup, URI, 'short.csv', '--out', 'short_scored.parquet')
    assert r.returncode == 2
    assert "lacks column(s) 'x2' that the model needs" in r.stderr
    (d / 'broken.parquet').write_bytes(b'not parquet at all')
    r = _predict(setup, URI, 'broken.parquet', '--out', 'x.parquet')
    assert r.returncode == 2 and 'Cannot read' in r.stderr and 'broken.parquet' in r.stderr
    r = _predict(setup, URI, 'mid.parquet', '--out', 'x.parquet', '--workers', '0')
    assert r.returncode == 2 and '--workers must be at least 1' in r.stderr
    assert len(_runs(setup)[1]) == before
    assert not (d / 'short_scored.parquet').exists() and not (d / 'short_scored.parquet.parts').exists()


MLFLOW_WATCH = """
import os, sys, traceback
main = os.getpid()
class Watch:  # the first import of MLflow in this (the command's) process: where it came from
    def find_spec(self, name, path, target=None):
        if name == 'mlflow' and os.getpid() == main:
            sys.meta_path.remove(self)
            open('mlflow_import.txt', 'w').write(' '.join(f.name for f in traceback.extract_stack()))
        return None
sys.meta_path.insert(0, Watch())
from mlops_nb.cli import main as cli
sys.exit(cli(sys.argv[1:]))
"""


def test_the_command_loads_mlflow_only_once_the_job_has_scored(setup):
    "A big batch (1M rows), MLflow's way (`MLOPS_NB_SQL_STORE=off`): the registry check, the model's download and the run's creation happen in a child that exits before the job scores."
    d = setup['dir']
    (d / 'mlflow_import.txt').unlink(missing_ok=True)
    r = subprocess.run([sys.executable, '-c', MLFLOW_WATCH, 'predict', URI, 'big.parquet', '--out', 'watched.parquet', '--keep', 'id',
                        '--no-worker', '--json'], cwd=d, env={**_env(), 'MLOPS_NB_SQL_STORE': 'off'}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out['status'] == 'FINISHED' and out['rows_out'] == N
    stack = (d / 'mlflow_import.txt').read_text().split()
    assert '_attempt' in stack and not {'_start', '_new_run', 'check_predict', 'report_lost', 'mark_lost_runs'} & set(stack), stack
    got = pd.read_parquet(d / 'watched.parquet')
    pd.testing.assert_frame_equal(got, setup['expected'], check_dtype=False)
    c, _ = _runs(setup)
    run = c.get_run(out['run_id'])
    assert run.info.status == 'FINISHED' and run.data.metrics['rows_out'] == N
    assert run.data.tags['mlops_nb.pid'].isdigit()  # the job's pid, sent with the rest once it ended


def test_on_the_embedded_store_the_command_never_loads_mlflow(setup):
    "Any size on the default SQLite store: alias, model files, the run and its records by SQL (`sqlstore`); the run reads back in MLflow as one MLflow made."
    d = setup['dir']
    (d / 'mlflow_import.txt').unlink(missing_ok=True)
    r = subprocess.run([sys.executable, '-c', MLFLOW_WATCH, 'predict', URI, 'mid.parquet', '--out', 'sql.parquet', '--keep', 'id',
                        '--no-worker', '--json'], cwd=d, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (d / 'mlflow_import.txt').exists(), (d / 'mlflow_import.txt').read_text()
    out = json.loads(r.stdout)
    pd.testing.assert_frame_equal(pd.read_parquet(d / 'sql.parquet'), setup['expected_mid'], check_dtype=False)
    c, _ = _runs(setup)
    run = c.get_run(out['run_id'])
    assert run.info.status == 'FINISHED' and run.info.end_time >= run.info.start_time and run.info.run_name == 'predict'
    assert run.data.metrics['rows_out'] == M and run.data.params['model_uri'] == URI and run.data.params['input_path'].endswith('mid.parquet')
    assert run.data.tags['mlops_nb.job'] == 'predict' and run.data.tags['mlops_nb.pid'].isdigit() and run.data.tags['mlflow.source.type'] == 'NOTEBOOK'
    arts = {a.path for a in c.list_artifacts(out['run_id'])} | {a.path for a in c.list_artifacts(out['run_id'], 'notebook')}
    assert {'environment.txt', 'reads.json', 'notebook/predict.ipynb', 'notebook/predict.html'} <= arts, arts
    assert json.loads(Path(c.download_artifacts(out['run_id'], 'reads.json', str(d))).read_text())['cwd'] == str(d)
    # the registry's own answer where SQL has none: an unknown alias is MLflow's error, listing the aliases there are
    bad = subprocess.run([sys.executable, '-c', MLFLOW_WATCH, 'predict', 'models:/batchdemo@nope', 'mid.parquet', '--out', 'no.parquet',
                          '--no-worker'], cwd=d, env=_env(), capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "no alias 'nope'" in bad.stderr and 'champion (version' in bad.stderr, bad.stderr[-2000:]
    assert not (d / 'no.parquet').exists()


@pytest.fixture(scope='module')
def cluster():
    distributed = pytest.importorskip('distributed')
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        yield lc, client


def _parts(d: Path):
    return sorted(d.glob('part-*.parquet'))


def test_dask_output_equals_local_and_a_killed_worker_is_rescored(setup, cluster):
    "On a LocalCluster the output is the model's own predictions, as the local executor's is (test above)."
    lc, client = cluster
    d = setup['dir']
    r = _predict(setup, URI, 'mid.parquet', '--out', 'dask_out', '--keep', 'id', '--executor', 'dask',
                 '--scheduler', lc.scheduler_address, '--json')
    assert r.returncode == 0, r.stderr[-3000:]
    got = pd.read_parquet(d / 'dask_out')
    pd.testing.assert_frame_equal(got, setup['expected_mid'], check_dtype=False)
    assert len(_parts(d / 'dask_out')) == 60
    c, _ = _runs(setup)
    m = c.get_run(json.loads(r.stdout)['run_id']).data.metrics
    assert m['model_loads'] <= 2  # once per worker process, not per partition

    # Kill a worker process as soon as the first part lands; its partitions are scored again elsewhere.
    p = subprocess.Popen([str(Path(sys.executable).parent / 'mlops-nb'), 'predict', URI, 'mid.parquet', '--out', 'killed_out',
                          '--keep', 'id', '--executor', 'dask', '--scheduler', lc.scheduler_address, '--json'],
                         cwd=d, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not _parts(d / 'killed_out') and time.time() < deadline and p.poll() is None: time.sleep(0.02)
    assert p.poll() is None, 'the job ended before a worker could be killed'
    pid = next(iter(client.run(os.getpid).values()))
    os.kill(pid, signal.SIGKILL)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert len(_parts(d / 'killed_out')) == 60  # each partition written exactly once
    pd.testing.assert_frame_equal(pd.read_parquet(d / 'killed_out'), setup['expected_mid'], check_dtype=False)


def test_ctrl_c_leaves_a_failed_run_and_resume_scores_the_rest(setup):
    d = setup['dir']
    p = subprocess.Popen([str(Path(sys.executable).parent / 'mlops-nb'), 'predict', URI, 'mid.parquet', '--out', 'resumed.parquet',
                          '--keep', 'id'], cwd=d, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = d / 'resumed.parquet.parts'
    deadline = time.time() + 300
    while not _parts(staging) and time.time() < deadline and p.poll() is None: time.sleep(0.02)
    assert p.poll() is None, 'the job ended before it could be interrupted'
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err[-3000:]
    kept = len(_parts(staging))
    assert 0 < kept < 60 and not (d / 'resumed.parquet').exists()
    c, runs = _runs(setup)
    failed = [r for r in runs if r.data.params.get('output_path', '').endswith('resumed.parquet')]
    assert len(failed) == 1 and failed[0].info.status == 'FAILED'
    assert failed[0].data.tags.get('mlops_nb.failure_reason') == 'interrupted'
    r = _predict(setup, '--resume', failed[0].info.run_id, '--json')
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    run = c.get_run(res['run_id'])
    assert run.data.tags['mlops_nb.resume_of'] == failed[0].info.run_id
    assert run.data.metrics['scored'] == 60 - kept and run.data.metrics['rows_out'] == M
    pd.testing.assert_frame_equal(pd.read_parquet(d / 'resumed.parquet'), setup['expected_mid'], check_dtype=False)


def _scorers(d: Path) -> list:
    import psutil
    out = []
    for q in psutil.process_iter(['name']):
        try:
            if q.info['name'] == 'mlops-nb-score' and Path(q.cwd()) == d: out.append(q)
        except psutil.Error: pass
    return out


def test_a_killed_scoring_process_fails_the_batch_naming_its_partition(setup):
    "The local executor's scoring processes (two here): one killed (as by the out-of-memory killer) fails the run, leaves no process behind, and resume finishes the job."
    from conftest import wait_for
    d = setup['dir']
    p = subprocess.Popen([str(Path(sys.executable).parent / 'mlops-nb'), 'predict', URI, 'mid.parquet', '--out', 'oom.parquet',
                          '--keep', 'id', '--workers', '2', '--json'], cwd=d, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    staging = d / 'oom.parquet.parts'
    deadline = time.time() + 300
    while not _parts(staging) and time.time() < deadline and p.poll() is None: time.sleep(0.02)
    assert p.poll() is None, 'the job ended before a scoring process could be killed'
    victims = _scorers(d)
    assert len(victims) == 2, victims
    victims[0].kill()
    out, err = p.communicate(timeout=300)
    assert p.returncode not in (0, None), err[-3000:]
    res = json.loads(out)
    assert res["status"] == "FAILED" and "died" in res["error"]["evalue"] and "partition" in res["error"]["evalue"], out[-3000:]
    wait_for(lambda: not _scorers(d), 'the other scoring process to exit')
    c, runs = _runs(setup)
    failed = [r for r in runs if r.data.params.get('output_path', '').endswith('oom.parquet')]
    assert len(failed) == 1 and failed[0].info.status == 'FAILED'
    assert not (d / 'oom.parquet').exists() and not list(d.glob('.oom.parquet*.tmp'))
    r = _predict(setup, '--resume', failed[0].info.run_id, '--json')
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_parquet(d / 'oom.parquet'), setup['expected_mid'], check_dtype=False)


def test_one_process_and_many_give_the_same_output(setup):
    d = setup['dir']
    for n in ('1', '3'):
        r = _predict(setup, URI, 'mid.parquet', '--out', f'w{n}.parquet', '--keep', 'id', '--workers', n, '--json')
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(json.loads(r.stdout)['recorded']['scored_on'].split(', ')) == int(n)
        pd.testing.assert_frame_equal(pd.read_parquet(d / f'w{n}.parquet'), setup['expected_mid'], check_dtype=False)


def test_a_bad_row_in_a_scoring_process_fails_naming_the_row(setup):
    "With --on-bad-rows fail the error raised in a scoring process (not the job's own) reaches the run with its row."
    d = setup['dir']
    rows = make_rows(20_000, seed=3)
    rows['x0'] = rows['x0'].astype(str)  # text in the file, as an export might write it
    rows.loc[12_345, 'x0'] = 'twelve'
    rows.to_parquet(d / 'late_bad.parquet', row_group_size=5_000)  # the bad row is in the third of four partitions
    r = _predict(setup, URI, 'late_bad.parquet', '--out', 'late_bad_out.parquet', '--on-bad-rows', 'fail', '--workers', '2')
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'Input row 12345 of' in r.stdout and 'x0: not a number' in r.stdout, r.stdout[-3000:]


@pytest.fixture(scope='module')
def linear(setup):
    "A logistic-regression pipeline (numbers, a text category) registered as `batchlin`, and 20,000 rows with unseen categories."
    d = setup['dir']
    est, schema, _ = train_and_register(d, name='batchlin', model='logistic')
    rows = make_rows(20_000, seed=5)
    rows.loc[::97, 'segment'] = 'unseen'  # a category the model never saw: one-hot zeros, in both forms
    rows.to_parquet(d / 'lin.parquet', row_group_size=5_000)
    return dict(rows=rows, uri='models:/batchlin@champion')


def test_compiled_form_predicts_as_pyfunc_row_for_row(setup, linear):
    "A pipeline that compiles is scored by ONNX Runtime (the run says so); every prediction equals `mlflow.pyfunc`'s, cold and cached."
    import mlflow
    mlflow.set_tracking_uri(setup['settings'].tracking_uri)
    want = np.asarray(mlflow.pyfunc.load_model(linear['uri']).predict(linear['rows'][FEATURES]))
    c, _ = _runs(setup)
    for out in ('lin_1.parquet', 'lin_2.parquet'):  # compiled and verified, then read from the cache
        r = _predict(setup, linear['uri'], 'lin.parquet', '--out', out, '--keep', 'id', '--json')
        assert r.returncode == 0, r.stderr[-3000:]
        p = c.get_run(json.loads(r.stdout)['run_id']).data.params
        assert p['scoring_engine'] == 'onnx', p
        assert p['scoring_engine_note'] == 'compiled (ONNX Runtime), same predictions as sklearn on 5205 verification rows', p  # 205 + the input's first 5,000
        got = pd.read_parquet(setup['dir'] / out)
        assert got['id'].tolist() == linear['rows']['id'].tolist()
        np.testing.assert_array_equal(got['prediction'].to_numpy(), want)


def test_compiled_form_is_not_used_when_it_disagrees(setup, linear):
    "A compiled form that disagrees on one verification row is refused with the count; `--onnx off` scores with scikit-learn."
    from mlops_nb import models
    s = setup['settings']
    forest, lin = models.load(URI, s), models.load(linear['uri'], s)
    rows = linear['rows'][FEATURES].head(2_000)
    wrong = models.CompiledModel(models.to_onnx(lin), forest.inputs, forest.classes_)  # the linear model's graph, as the forest's
    why = models.verify_compiled(forest, wrong, rows)
    assert why and why.startswith('the compiled model disagrees with sklearn on ') and why.endswith(' of 2000 verification rows'), why
    assert models.verify_compiled(lin, models.CompiledModel(models.to_onnx(lin), lin.inputs, lin.classes_), rows) is None
    r = _predict(setup, linear['uri'], 'lin.parquet', '--out', 'lin_off.parquet', '--onnx', 'off', '--json')
    assert r.returncode == 0, r.stderr[-3000:]
    c, _ = _runs(setup)
    p = c.get_run(json.loads(r.stdout)['run_id']).data.params
    assert (p['scoring_engine'], p['scoring_engine_note'], p['onnx']) == ('sklearn', 'compiled form switched off', 'off')
