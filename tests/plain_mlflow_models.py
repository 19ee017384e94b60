"""Models logged by plain MLflow code (no mlops_nb), the way teams already log them; run as a script in a scratch folder.
Explicit `pip_requirements` spare MLflow's requirement inference (a process per model); autolog infers them.

Each flavour gets a registered model `NAME` whose version 1 is `champion`, and a deliberately weak challenger run
(labels or targets shuffled, or a constant) that is logged but not registered. Prints a JSON document:
{NAME: {"champion_run": ..., "weak_run": ..., "holdout": FILE, "target": COLUMN}}.
"""
import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split

out = {}
rng = np.random.default_rng(0)
client = mlflow.MlflowClient()

bc = load_breast_cancer(as_frame=True).frame.iloc[:, list(range(6)) + [-1]]  # six features and the target
bc_tr, bc_te = train_test_split(bc, test_size=0.3, random_state=0, stratify=bc['target'])
bc_te.to_csv('bc_holdout.csv', index=False)
Xb, yb = bc_tr.drop(columns='target'), bc_tr['target']
shuffled_b = pd.Series(rng.permutation(yb.to_numpy()), index=yb.index)

db = load_diabetes(as_frame=True).frame
db_tr, db_te = train_test_split(db, test_size=0.3, random_state=0)
db_te.to_csv('diabetes_holdout.csv', index=False)
Xd, yd = db_tr.drop(columns='target'), db_tr['target']
shuffled_d = pd.Series(rng.permutation(yd.to_numpy()), index=yd.index)


def register(name, run_id, path='model'):
    mv = mlflow.register_model(f'runs:/{run_id}/{path}', name)
    client.set_registered_model_alias(name, 'champion', mv.version)


# scikit-learn through autolog
from sklearn.linear_model import LogisticRegression
mlflow.sklearn.autolog(log_input_examples=True, silent=True)
runs = []
for y in (yb, shuffled_b):
    with mlflow.start_run() as r:
        LogisticRegression(max_iter=2000).fit(Xb, y)
    runs.append(r.info.run_id)
mlflow.sklearn.autolog(disable=True)
register('sk', runs[0])
out['sk'] = dict(champion_run=runs[0], weak_run=runs[1], holdout='bc_holdout.csv', target='target')

# XGBoost's own flavour
import xgboost as xgb
runs = []
for y in (yb, shuffled_b):
    with mlflow.start_run() as r:
        m = xgb.XGBClassifier(n_estimators=30, max_depth=3, random_state=0).fit(Xb, y)
        mlflow.xgboost.log_model(m, name='model', input_example=Xb.head(5), pip_requirements=[f'xgboost=={xgb.__version__}'])
    runs.append(r.info.run_id)
register('xgb', runs[0])
out['xgb'] = dict(champion_run=runs[0], weak_run=runs[1], holdout='bc_holdout.csv', target='target')

# LightGBM's own flavour, a regressor
import lightgbm as lgb
runs = []
for y in (yd, shuffled_d):
    with mlflow.start_run() as r:
        m = lgb.LGBMRegressor(n_estimators=40, num_leaves=8, random_state=0, verbose=-1).fit(Xd, y)
        mlflow.lightgbm.log_model(m, name='model', input_example=Xd.head(5), pip_requirements=[f'lightgbm=={lgb.__version__}'])
    runs.append(r.info.run_id)
register('lgb', runs[0])
out['lgb'] = dict(champion_run=runs[0], weak_run=runs[1], holdout='diabetes_holdout.csv', target='target')


# a custom PythonModel: a rule on one column, or a constant
class Rule(mlflow.pyfunc.PythonModel):
    def __init__(self, cut): self.cut = cut
    def predict(self, context, model_input, params=None):
        return (model_input['mean radius'] < self.cut).astype('int64')

runs = []
for cut in (14.5, -1.0):  # -1: every row 0
    with mlflow.start_run() as r:
        mlflow.pyfunc.log_model(name='model', python_model=Rule(cut), input_example=Xb.head(5), pip_requirements=['pandas'])
    runs.append(r.info.run_id)
register('custom', runs[0])
out['custom'] = dict(champion_run=runs[0], weak_run=runs[1], holdout='bc_holdout.csv', target='target')

# models from code: the model is a script, not a pickle
CODE = '''import mlflow
class Linear(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return (model_input['mean texture'] < CUT).astype('int64')
mlflow.models.set_model(Linear())
'''
runs = []
for cut in (19.0, -1.0):
    f = Path(f'from_code_{len(runs)}.py')
    f.write_text(CODE.replace('CUT', str(cut)))
    with mlflow.start_run() as r:
        mlflow.pyfunc.log_model(name='model', python_model=str(f), input_example=Xb.head(5), pip_requirements=['pandas'])
    runs.append(r.info.run_id)
register('fromcode', runs[0])
out['fromcode'] = dict(champion_run=runs[0], weak_run=runs[1], holdout='bc_holdout.csv', target='target')

json.dump(out, sys.stdout)
