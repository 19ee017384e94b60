"""Any MLflow model, everywhere: models logged by plain MLflow code (scikit-learn autolog, mlflow.xgboost,
mlflow.lightgbm, a custom PythonModel, models-from-code) served over real HTTP, batch-scored and gated with
`mlops-nb`, each answer compared with `mlflow.pyfunc.load_model(uri).predict`."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import mlops_nb
from serve_helpers import Proc, http, mlops_nb_exe, post_json, store_env

HERE = Path(__file__).resolve().parent
FLAVOURS = ['sk', 'xgb', 'lgb', 'custom', 'fromcode']  # registered model names, one per way of logging


@pytest.fixture(scope='module')
def store(tmp_path_factory):
    "Every model logged once, by a script that knows nothing of mlops_nb: `(folder, {name: runs and holdout file})`."
    d = tmp_path_factory.mktemp('models')
    r = subprocess.run([sys.executable, str(HERE / 'plain_mlflow_models.py')], cwd=d, env=store_env(d), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return d, json.loads(r.stdout)


def reference(d: Path, name: str, X: pd.DataFrame) -> np.ndarray:
    "What MLflow itself predicts for `X`."
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{d / 'mlflow.db'}")
    return np.asarray(mlflow.pyfunc.load_model(f'models:/{name}@champion').predict(X))


def rows(d: Path, info: dict) -> pd.DataFrame:
    return pd.read_csv(d / info['holdout']).drop(columns=info['target'])


def payloads(df: pd.DataFrame) -> dict:
    split = json.loads(df.to_json(orient='split', index=False))
    return {'dataframe_split': json.dumps({'dataframe_split': split}).encode(),
            'dataframe_records': json.dumps({'dataframe_records': df.to_dict('records')}).encode(),
            'instances': json.dumps({'instances': df.to_dict('records')}).encode(),
            'inputs': json.dumps({'inputs': df.to_dict('list')}).encode(),
            'csv': df.to_csv(index=False).encode()}


def served_equal_to_mlflow(p: Proc, X: pd.DataFrame, want: np.ndarray) -> dict:
    "Every MLflow request format answers `want`; returns `/version`."
    for fmt, body in payloads(X).items():
        st, _, doc = post_json(p.base, body, ctype='text/csv' if fmt == 'csv' else 'application/json')
        assert st == 200, (fmt, doc)
        np.testing.assert_allclose(np.asarray(doc['predictions'], dtype=float), want.astype(float), rtol=1e-6, err_msg=fmt)
    return json.loads(http('GET', f'{p.base}/version')[2])


@pytest.mark.parametrize('name', FLAVOURS)
def test_served_every_format_equal_to_mlflow(store, name):
    d, info = store
    X = rows(d, info[name]).head(40)
    want = reference(d, name, X)
    p = Proc([mlops_nb_exe(), 'serve', f'models:/{name}@champion', '--port', '{port}'], d, store_env(d))
    try:
        v = served_equal_to_mlflow(p, X, want)
        flavour = {'sk': 'sklearn', 'xgb': 'xgboost', 'lgb': 'lightgbm'}.get(name, 'python_function')
        assert v['engine'] in (flavour, 'onnx'), v
        if name in ('xgb', 'lgb'): assert v['engine'] == 'onnx' and 'verification rows' in v['engine_note'], v  # compiled, and verified
        if name == 'sk': assert 'verification rows' in v['engine_note'], v  # autolog kept no split: checked on drawn rows
        missing = X.columns[1]
        st, _, doc = post_json(p.base, {'dataframe_split': json.loads(X.drop(columns=missing).head(2).to_json(orient='split', index=False))})
        assert 400 <= st < 500 and missing in doc['message'], doc
        st, _, doc = post_json(p.base, {'dataframe_records': [{**X.iloc[0].to_dict(), 'surprise': 1}]})
        assert 400 <= st < 500 and 'surprise' in doc['message'], doc
    finally:
        p.stop()


@pytest.mark.parametrize('name', ['xgb', 'lgb'])
def test_boosted_served_by_their_own_flavour_with_onnx_off(store, name):
    d, info = store
    X = rows(d, info[name]).head(40)
    p = Proc([mlops_nb_exe(), 'serve', f'models:/{name}@champion', '--port', '{port}', '--onnx', 'off'], d, store_env(d))
    try: v = served_equal_to_mlflow(p, X, reference(d, name, X))
    finally: p.stop()
    assert (v['engine'], v['engine_note']) == ({'xgb': 'xgboost', 'lgb': 'lightgbm'}[name], 'ONNX fast path switched off (--onnx off)'), v


@pytest.mark.parametrize('name', FLAVOURS)
def test_batch_scored_every_row_equal_to_mlflow(store, name):
    d, info = store
    X = rows(d, info[name])
    X.assign(row_id=range(len(X))).to_csv(d / f'{name}_in.csv', index=False)
    r = mlops_nb('predict', f'models:/{name}@champion', f'{name}_in.csv', '--out', f'{name}_scored.parquet', '--keep', 'row_id',
                 '--workers', '1', '--json', cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stderr[-3000:]
    out = pd.read_parquet(d / f'{name}_scored.parquet')
    assert out['row_id'].astype(int).tolist() == list(range(len(X)))  # kept CSV columns stay text
    np.testing.assert_allclose(out['prediction'].to_numpy(dtype=float), reference(d, name, X).astype(float), rtol=1e-9)


def test_batch_without_schema_json_checks_rows_against_the_signature(store):
    "A pyfunc model has only MLflow's signature: a missing column is refused up front, a value of the wrong type is rejected."
    d, info = store
    X = rows(d, info['custom']).head(30)
    X.drop(columns='mean area').to_csv(d / 'no_area.csv', index=False)
    r = mlops_nb('predict', 'models:/custom@champion', 'no_area.csv', '--out', 'never.parquet', cwd=d, env=store_env(d))
    assert r.returncode == 2 and "'mean area'" in r.stderr, r.stderr[-2000:]
    assert not (d / 'never.parquet').exists()
    bad = X.astype({'mean radius': object})
    bad.loc[bad.index[3], 'mean radius'] = 'abc'
    bad.to_csv(d / 'bad.csv', index=False)
    r = mlops_nb('predict', 'models:/custom@champion', 'bad.csv', '--out', 'bad_scored.parquet', '--workers', '1', '--json',
                 cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert (doc['rows_out'], doc['rows_rejected']) == (29, 1), doc
    rej = pd.read_csv(d / 'bad_scored.rejects.csv')
    assert rej['row'].tolist() == [3] and 'mean radius' in rej['reason'][0]
    good = X.drop(index=X.index[3])
    np.testing.assert_array_equal(pd.read_parquet(d / 'bad_scored.parquet')['prediction'].to_numpy(), reference(d, 'custom', good))


def _alias(d: Path, name: str, alias: str = 'champion'):
    from mlflow import MlflowClient
    try: return str(MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}").get_model_version_by_alias(name, alias).version)
    except Exception: return None


@pytest.mark.parametrize('name', FLAVOURS)
def test_gate_refuses_a_weak_challenger_on_the_same_rows(store, name):
    d, info = store
    i = info[name]
    r = mlops_nb('promote', name, '--run', i['weak_run'], '--data', i['holdout'], '--target', i['target'], '--json', cwd=d, env=store_env(d))
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
    doc = json.loads(r.stdout)
    g = doc['gate']
    assert (g['passed'], g['champion_version'], doc['moved']) == (False, '1', False)
    relative = [c for c in g['checks'] if c['metric'] and c['note'].startswith('champion')]
    assert relative and not any(c['passed'] for c in relative), g['checks']
    expected = {'sk': 'roc_auc', 'xgb': 'roc_auc', 'lgb': 'rmse', 'custom': 'accuracy', 'fromcode': 'accuracy'}[name]
    assert relative[0]['metric'] == expected
    assert _alias(d, name) == '1'


def test_gate_any_run_passes_then_refuses_and_takes_a_registered_version(store):
    "An XGBoost run becomes champion of a new name on a held-out file; its weak sibling is refused; --version gates a registered one."
    d, info = store
    i = info['xgb']
    args = ('--data', i['holdout'], '--target', i['target'])
    r = mlops_nb('promote', 'xgb2', '--run', i['champion_run'], *args, cwd=d, env=store_env(d))
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert "is now 'champion'" in r.stdout and _alias(d, 'xgb2') == '1'
    r = mlops_nb('promote', 'xgb2', '--run', i['weak_run'], *args, cwd=d, env=store_env(d))
    assert r.returncode == 1 and "stays on version 1" in r.stdout, (r.stdout[-2000:], r.stderr[-2000:])
    (d / 'gate.yaml').write_text('checks:\n  - accuracy >= 0.3\n')
    r = mlops_nb('promote', 'xgb2', '--version', '2', *args, '--gate', 'gate.yaml', cwd=d, env=store_env(d))
    assert r.returncode == 0 and _alias(d, 'xgb2') == '2', (r.stdout[-2000:], r.stderr[-2000:])
    r = mlops_nb('promote', 'xgb2', '--run', i['weak_run'], '--data', i['holdout'], cwd=d, env=store_env(d))
    assert r.returncode == 2 and '--target' in r.stderr
    r = mlops_nb('promote', 'xgb2', '--run', i['weak_run'], '--data', info['lgb']['holdout'], '--target', 'target', cwd=d, env=store_env(d))
    assert r.returncode == 2 and "'mean radius'" in r.stderr, r.stderr[-2000:]


def test_a_model_that_cannot_load_exits_2_before_serving(store):
    import mlflow
    d, _ = store
    mlflow.set_tracking_uri(f"sqlite:///{d / 'mlflow.db'}")
    path = Path(mlflow.artifacts.download_artifacts('models:/custom@champion', dst_path=str(d / 'broken')))
    (path / 'python_model.pkl').write_bytes(b'not a pickle')
    r = subprocess.run([mlops_nb_exe(), 'serve', str(path), '--port', '1'], cwd=d, env=store_env(d), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and 'serving' not in r.stdout, (r.stdout, r.stderr[-2000:])
    assert f'Cannot load model {path} with its python_function flavour' in r.stderr


def test_deploy_ships_the_models_own_requirements(store):
    "The XGBoost model's build context pins xgboost beside our serving stack, and its folder serves without the registry."
    d, _ = store
    r = mlops_nb('deploy', 'models:/xgb@champion', '--out', 'ctx_xgb', cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stderr[-2000:]
    reqs = (d / 'ctx_xgb' / 'requirements.txt').read_text().split()
    import xgboost
    assert f'xgboost=={xgboost.__version__}' in reqs and any(q.startswith('mlflow-skinny==') for q in reqs), reqs
    assert not any(q.startswith('mlflow==') for q in reqs)


def test_loop_alerts_but_does_not_retrain_a_model_without_a_recipe(store):
    "Drift on a PythonModel's traffic (batch-scored into the request log): with labels, the loop still only alerts, and says why."
    d, info = store
    X = rows(d, info['custom'])
    X.to_csv(d / 'reference.csv', index=False)
    (X * 1.8).to_csv(d / 'shifted.csv', index=False)
    r = mlops_nb('predict', 'models:/custom@champion', 'shifted.csv', '--out', 'shifted_scored.parquet', '--workers', '1',
                 '--log-dir', 'reqlog', cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stderr[-2000:]
    pd.DataFrame({'request_id': ['x'], 'label': [1]}).to_csv(d / 'labels.csv', index=False)
    r = mlops_nb('monitor', 'custom', '--log-dir', 'reqlog', '--window', '', '--reference', 'reference.csv', '--labels', 'labels.csv',
                 '--dry-run', '--json', cwd=d, env=store_env(d))
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
    doc = json.loads(r.stdout)
    assert doc['action'] == 'would_alert' and doc['drift']['drifted'], doc
    assert 'has no train recipe' in doc['detail'] and '--data HOLDOUT --target COLUMN' in doc['detail']


CATBOOST_SCRIPT = """import json, mlflow, catboost, pandas as pd
X = pd.read_csv('bc_holdout.csv').drop(columns='target')
y = pd.read_csv('bc_holdout.csv')['target']
m = catboost.CatBoostClassifier(iterations=30, depth=3, random_seed=0, verbose=0).fit(X, y)
with mlflow.start_run() as r:
    mlflow.catboost.log_model(m, name='model', input_example=X.head(5), pip_requirements=[f'catboost=={catboost.__version__}'])
mv = mlflow.register_model(f'runs:/{r.info.run_id}/model', 'cb')
mlflow.MlflowClient().set_registered_model_alias('cb', 'champion', mv.version)
"""


def test_catboost_logged_by_plain_mlflow_and_by_log_model(store, tmp_path):
    "CatBoost (the optional extra mlops_nb[catboost]): served through its own flavour, every format equal to pyfunc, "
    "probabilities equal to the model's, a missing column named; `mlops_nb.log_model` logs one in the catboost flavour."
    catboost = pytest.importorskip('catboost')
    import mlflow.catboost
    from mlops_nb import models
    d, info = store
    r = subprocess.run([sys.executable, '-c', CATBOOST_SCRIPT], cwd=d, env=store_env(d), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    X = rows(d, info['xgb']).head(40)  # the breast-cancer hold-out rows
    p = Proc([mlops_nb_exe(), 'serve', 'models:/cb@champion', '--port', '{port}'], d, store_env(d))
    try:
        v = served_equal_to_mlflow(p, X, reference(d, 'cb', X))
        assert v['engine'] == 'catboost', v  # no compiled path for CatBoost: its own model predicts
        st, _, doc = post_json(p.base, {'inputs': X.head(3).to_dict('list'), 'params': {'predict_method': 'predict_proba'}})
        raw = mlflow.catboost.load_model('models:/cb@champion')
        assert st == 200 and np.allclose(doc['predictions'], raw.predict_proba(X.head(3))), doc
        st, _, doc = post_json(p.base, {'dataframe_split': json.loads(X.drop(columns='mean area').head(2).to_json(orient='split', index=False))})
        assert 400 <= st < 500 and 'mean area' in doc['message'], doc
    finally:
        p.stop()
    from mlops_nb.core import get_settings
    from mlops_nb.tracking import log_model, start_run
    with start_run(settings=get_settings(cwd=tmp_path, env={})):
        uri = log_model(raw, X.head())
    lm = models.load(uri, get_settings(cwd=tmp_path, env={}))
    assert (lm.flavour, lm.task, lm.schema_source) == ('catboost', 'classification', 'schema.json')
    assert any(q.startswith('catboost==') for q in lm.requirements), lm.requirements
    np.testing.assert_array_equal(np.asarray(lm.predict(X)).ravel(), np.asarray(raw.predict(X)).ravel())
    np.testing.assert_allclose(lm.predict_proba(X), raw.predict_proba(X))
