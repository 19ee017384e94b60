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
from serve_helpers import Proc, mlops_nb_exe, post_json, store_env

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


@pytest.mark.parametrize('name', FLAVOURS)
def test_served_every_format_equal_to_mlflow(store, name):
    d, info = store
    X = rows(d, info[name]).head(40)
    want = reference(d, name, X)
    p = Proc([mlops_nb_exe(), 'serve', f'models:/{name}@champion', '--port', '{port}'], d, store_env(d))
    try:
        for fmt, body in payloads(X).items():
            st, _, doc = post_json(p.base, body, ctype='text/csv' if fmt == 'csv' else 'application/json')
            assert st == 200, (fmt, doc)
            np.testing.assert_allclose(np.asarray(doc['predictions'], dtype=float), want.astype(float), rtol=1e-6, err_msg=fmt)
        missing = X.columns[1]
        st, _, doc = post_json(p.base, {'dataframe_split': json.loads(X.drop(columns=missing).head(2).to_json(orient='split', index=False))})
        assert 400 <= st < 500 and missing in doc['message'], doc
        st, _, doc = post_json(p.base, {'dataframe_records': [{**X.iloc[0].to_dict(), 'surprise': 1}]})
        assert 400 <= st < 500 and 'surprise' in doc['message'], doc
    finally:
        p.stop()
