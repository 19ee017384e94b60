"""The closed loop end to end: a champion served for real, traffic before and after a known shift,
`mlops-nb monitor` deciding, retraining and promoting only when it should."""
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from conftest import mlops_nb
from serve_helpers import Proc, mlops_nb_exe, post_json, store_env

from mlops_nb.loop import shift_data

MODEL = 'scenario'


def now() -> str: return datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def send(d: Path, df: pd.DataFrame, prefix: str, rows_per_request: int = 10) -> pd.DataFrame:
    "Serve the champion (request log in d/req), send `df` in requests with our own ids, stop the server; the labels."
    srv = Proc([mlops_nb_exe(), 'serve', f'models:/{MODEL}@champion', '--port', '{port}', '--log-dir', 'req'], cwd=d, env=store_env(d))
    labels = []
    try:
        X = df.drop(columns='target')
        for i in range(0, len(df), rows_per_request):
            rid = f'{prefix}-{i // rows_per_request}'
            chunk = X.iloc[i:i + rows_per_request]
            st, h, body = post_json(srv.base, {'dataframe_split': chunk.to_dict(orient='split', index=False)}, headers={'x-request-id': rid})
            assert st == 200, body
            assert h['x-request-id'] == rid
            labels += [{'request_id': rid, 'row': j, 'label': int(y)} for j, y in enumerate(df['target'].iloc[i:i + rows_per_request])]
    finally:
        assert srv.terminate() == 0, srv.output()  # SIGTERM flushes the request log
    return pd.DataFrame(labels)


def monitor(d: Path, *args):
    r = mlops_nb('monitor', MODEL, '--log-dir', 'req', '--drift-share', '0.2', '--json', *args, cwd=d, env=store_env(d))
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout), r


def champion_version(d: Path) -> str:
    r = mlops_nb('models', MODEL, '--json', cwd=d, env=store_env(d))
    return next(v['version'] for v in json.loads(r.stdout)['versions'] if 'champion' in v['aliases'])


@pytest.fixture(scope='module')
def scenario(tmp_path_factory):
    "A champion trained before the shift, a window of traffic before it and a window after it, with labels."
    d = tmp_path_factory.mktemp('loop')
    shift_data(1500, seed=1).to_csv(d / 'train.csv', index=False)
    r = mlops_nb('run', 'train', '-p', 'dataset', 'train.csv', '-p', 'target', 'target', '-p', 'model', 'logistic', '--json', cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = json.loads(r.stdout)['run_id']
    r = mlops_nb('promote', MODEL, '--run', run_id, cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stdout + r.stderr
    t0 = now()
    before = send(d, shift_data(400, seed=5), 'before')
    t1 = now()
    after = send(d, shift_data(600, shifted=True, seed=6), 'after')
    before.to_csv(d / 'labels_before.csv', index=False)
    after.to_csv(d / 'labels.csv', index=False)
    noise = after.assign(label=after['label'].sample(frac=1, random_state=0).to_numpy())  # labels that teach nothing
    noise.to_csv(d / 'labels_noise.csv', index=False)
    return d, t0, t1


def test_no_drift_before_the_shift(scenario):
    d, t0, t1 = scenario
    rc, doc, r = monitor(d, '--start', t0, '--end', t1, '--labels', 'labels_before.csv')
    assert (rc, doc['action']) == (0, 'no_drift'), r.stderr
    assert doc['window']['rows'] == 400 and doc['drift']['drifted'] is False
    assert doc['retrain_run_id'] is None  # no drift: nothing retrained, even with labels at hand
    assert champion_version(d) == '1'


def test_dry_run_says_what_it_would_do_and_writes_nothing(scenario):
    d, t0, t1 = scenario
    runs = len(list((d / 'mlartifacts').rglob('MLmodel')))
    rc, doc, _ = monitor(d, '--start', t1, '--labels', 'labels.csv', '--dry-run')
    assert (rc, doc['action'], doc['labelled_rows']) == (1, 'would_retrain', 600)
    assert 'x0' in doc['drift']['drifted_columns'] and doc['monitor_run_id'] is None
    assert len(list((d / 'mlartifacts').rglob('MLmodel'))) == runs


def test_drift_without_labels_alerts_only(scenario):
    d, t0, t1 = scenario
    rc, doc, _ = monitor(d, '--start', t1)
    assert (rc, doc['action']) == (1, 'drift_no_labels')
    assert doc['monitor_run_id'] and doc['retrain_run_id'] is None
    assert champion_version(d) == '1'


def test_a_retrained_model_that_does_not_beat_the_champion_is_refused(scenario):
    d, t0, t1 = scenario
    rc, doc, r = monitor(d, '--start', t1, '--labels', 'labels_noise.csv')
    assert (rc, doc['action']) == (1, 'refused'), r.stderr
    assert doc['retrain_run_id'] and doc['promotion']['gate']['passed'] is False
    assert champion_version(d) == '1'


def test_drift_after_the_shift_retrains_and_promotes(scenario):
    d, t0, t1 = scenario
    rc, doc, r = monitor(d, '--start', t1, '--labels', 'labels.csv')
    assert (rc, doc['action']) == (0, 'promoted'), r.stderr + json.dumps(doc, indent=1)
    assert doc['drift']['drifted'] and doc['drift']['drifted_columns'] == ['x0']
    assert doc['labelled_rows'] == 600 and doc['new_version'] == champion_version(d) != '1'
    checks = {c['check']: c for c in doc['promotion']['gate']['checks']}
    beat = checks['roc_auc > champion']
    assert beat['passed'] and beat['value'] > beat['bound'] + 0.2  # the old rule is wrong on the new data
    # the chain is linked both ways: the retrain pipeline's run is a child of the monitor run, its steps children of it
    from mlflow import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
    mon, pipe, tr = (c.get_run(doc[k]) for k in ('monitor_run_id', 'pipeline_run_id', 'retrain_run_id'))
    assert mon.data.tags['mlops_nb.loop.retrain_run'] == tr.info.run_id
    assert mon.data.tags['mlops_nb.loop.action'] == pipe.data.tags['mlops_nb.loop.action'] == 'promoted'
    assert pipe.data.tags['mlflow.parentRunId'] == mon.info.run_id and pipe.data.tags['mlops_nb.pipeline'] == 'retrain'
    assert tr.data.tags['mlflow.parentRunId'] == c.get_run(doc['evaluate_run_id']).data.tags['mlflow.parentRunId'] == pipe.info.run_id
    assert mon.info.status == pipe.info.status == tr.info.status == 'FINISHED'
    assert 'pipeline.svg' in [a.path for a in c.list_artifacts(pipe.info.run_id)]
    # what ran can be read and run again by hand
    ran = d / '.mlops_nb' / 'loop' / mon.info.run_id
    assert {'retrain.yaml', 'gate.yaml', 'window.parquet'} <= {f.name for f in ran.iterdir()}
    assert len(pd.read_parquet(ran / 'window.parquet')) == 600


@pytest.mark.parametrize('args, says', [
    (['--model-name-typo'], 'unrecognized arguments'),
    (['--labels', 'nope.csv'], 'nope.csv does not exist'),
    (['--labels', 'labels.csv', '--label-column', 'y'], "no column 'y'"),
    (['--window', 'yesterday'], "Cannot read window 'yesterday'"),
])
def test_bad_input_exits_2_before_any_run(scenario, args, says):
    d, *_ = scenario
    r = mlops_nb('monitor', MODEL, '--log-dir', 'req', *args, cwd=d, env=store_env(d))
    assert r.returncode == 2 and says in r.stderr, r.stderr


def test_unknown_model_and_missing_log(scenario):
    d, *_ = scenario
    r = mlops_nb('monitor', 'nobody', '--log-dir', 'req', cwd=d, env=store_env(d))
    assert r.returncode == 2 and 'nobody' in r.stderr
    r = mlops_nb('monitor', MODEL, '--log-dir', 'nowhere', cwd=d, env=store_env(d))
    assert r.returncode == 2 and 'No request log at nowhere' in r.stderr
