"""Features, training and evaluation from the outside: every model on every task's bundled set."""
import pickle
import struct
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from mlops_nb.core import ConfigError, MlopsNbError, ParameterError
from mlops_nb.data import infer_schema, load_dataset, split
from mlops_nb.evaluate import (
    evaluate,
    evaluation_plots,
    feature_importance,
    save_figures,
)
from mlops_nb.features import build_preprocessor
from mlops_nb.train import MODELS, fit, make_pipeline, models_for

DATASETS = {'binary': 'breast_cancer', 'multiclass': 'wine', 'regression': 'diabetes'}
SMALL = {'random_forest': {'n_estimators': 15}, 'gradient_boosting': {'max_iter': 25}}  # fast, still sensible
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def sets():
    "{task: (train, test, schema)} for the three bundled sets, split once."
    out = {}
    for task, name in DATASETS.items():
        df = load_dataset(name)
        train, test = split(df, test_size=0.3, seed=0, stratify=None if task == 'regression' else 'target')
        out[task] = train, test, infer_schema(train, target='target')
    return out


def _fit_eval(sets, task, model, seed=0):
    train, test, schema = sets[task]
    m = fit(train, schema, model, seed=seed, **SMALL.get(model, {}))
    return m, evaluate(m, test.drop(columns='target'), test['target'])


CASES = [(t, m) for t in DATASETS for m in ('logistic', 'linear', 'random_forest', 'gradient_boosting') if m in models_for(t)]


def test_every_task_has_its_models():
    assert [c for c in CASES if c[0] == 'binary'] == [('binary', 'logistic'), ('binary', 'random_forest'), ('binary', 'gradient_boosting')]
    assert ('regression', 'linear') in CASES and ('regression', 'logistic') not in CASES


@pytest.mark.parametrize('task,model', CASES)
def test_each_model_fits_each_task_with_plausible_metrics(sets, task, model):
    _, res = _fit_eval(sets, task, model)
    assert all(type(v) is float for v in res.values()), res
    if task == 'binary':
        assert set(res) >= {'accuracy', 'balanced_accuracy', 'f1', 'precision', 'recall', 'roc_auc', 'average_precision', 'log_loss'}
        assert res['roc_auc'] > 0.9 and res['accuracy'] > 0.85, res
        # a 15-tree forest gives some 0/1 probabilities, which log loss punishes hard
        assert 0 < res['log_loss'] < (2.0 if model == 'random_forest' else 0.5), res
    elif task == 'multiclass':
        assert set(res) >= {'accuracy', 'f1', 'roc_auc', 'log_loss'} and 'average_precision' not in res
        assert res['accuracy'] > 0.8 and res['roc_auc'] > 0.9, res
    else:
        assert set(res) == {'rmse', 'mae', 'r2', 'mape'}
        y = sets[task][1]['target']
        assert 0.2 < res['r2'] < 0.8 and res['rmse'] < y.std() and res['mae'] < res['rmse'], res


def test_random_forest_on_breast_cancer_ranks_well(sets):
    assert _fit_eval(sets, 'binary', 'random_forest')[1]['roc_auc'] > 0.95


@pytest.mark.parametrize('model', ['random_forest', 'gradient_boosting', 'logistic'])
def test_same_seed_same_model(sets, model):
    m1, r1 = _fit_eval(sets, 'binary', model, seed=3)
    m2, r2 = _fit_eval(sets, 'binary', model, seed=3)
    assert r1 == r2
    X = sets['binary'][1].drop(columns='target')
    np.testing.assert_array_equal(m1.predict_proba(X), m2.predict_proba(X))


def test_other_seed_other_forest(sets):
    X = sets['binary'][1].drop(columns='target')
    p0 = _fit_eval(sets, 'binary', 'random_forest', seed=0)[0].predict_proba(X)
    p1 = _fit_eval(sets, 'binary', 'random_forest', seed=1)[0].predict_proba(X)
    assert not np.array_equal(p0, p1)


def test_unknown_model_lists_the_registered_ones(sets):
    train, _, schema = sets['binary']
    with pytest.raises(ConfigError) as e:
        fit(train, schema, 'no_such_model')
    for name in MODELS.names(): assert name in str(e.value)
    assert e.value.exit_code == 2


def test_unknown_param_names_it_and_lists_valid_ones(sets):
    train, _, schema = sets['binary']
    with pytest.raises(ParameterError) as e:
        fit(train, schema, 'random_forest', n_estimator=5)
    msg = str(e.value)
    assert "'n_estimator'" in msg and "'n_estimators'" in msg and "'max_depth'" in msg and 'get_params()' in msg
    assert e.value.param == 'n_estimator' and 'n_estimators' in e.value.valid


def test_model_for_the_wrong_task_names_the_ones_that_fit(sets):
    train, _, schema = sets['regression']
    with pytest.raises(MlopsNbError, match='Models for regression: gradient_boosting, lightgbm, linear, random_forest, xgboost'):
        fit(train, schema, 'logistic')
    with pytest.raises(MlopsNbError, match='Models for binary: gradient_boosting, lightgbm, logistic, random_forest, xgboost'):
        make_pipeline(sets['binary'][2], 'linear')


def _png_size(data: bytes) -> tuple[int, int]:
    return struct.unpack('>II', data[16:24])  # IHDR width, height


@pytest.mark.parametrize('task,model', [('binary', 'random_forest'), ('multiclass', 'logistic'), ('regression', 'gradient_boosting')])
def test_plots_are_saved_as_real_pngs(sets, tmp_path, task, model):
    import matplotlib.pyplot as plt
    open_before = plt.get_fignums()
    m, _ = _fit_eval(sets, task, model)
    test = sets[task][1]
    figs = evaluation_plots(m, test.drop(columns='target'), test['target'])
    expected = ['residuals', 'feature_importance'] if task == 'regression' else ['confusion_matrix', 'roc', 'pr', 'feature_importance']
    assert list(figs) == expected
    paths = save_figures(figs, tmp_path / 'plots')
    assert [p.name for p in paths] == [f'{n}.png' for n in expected]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC, p
        assert 5_000 < len(data) < 300_000, (p, len(data))
        w, h = _png_size(data)
        assert 200 <= w <= 1000 and 200 <= h <= 1000, (p, w, h)
    assert plt.get_fignums() == open_before  # nothing leaked into pyplot


def test_save_figures_closes_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(); ax.plot([0, 1], [1, 0])
    assert fig.number in plt.get_fignums()
    save_figures({'mine': fig}, tmp_path)
    assert fig.number not in plt.get_fignums() and (tmp_path / 'mine.png').read_bytes()[:8] == PNG_MAGIC


def _churn(n=200, seed=0):
    rng = np.random.default_rng(seed)
    plan = rng.choice(['basic', 'pro', 'team'], n)
    age = rng.normal(40, 10, n)
    churn = ((plan == 'basic') ^ (rng.random(n) < 0.1)).astype(int)
    df = pd.DataFrame({'age': age, 'plan': plan, 'signup': pd.date_range('2024-01-01', periods=n, freq='D'), 'churn': churn})
    df.loc[::7, 'age'] = np.nan
    df.loc[::11, 'plan'] = None
    return df


@pytest.mark.parametrize('model', ['logistic', 'random_forest', 'gradient_boosting'])
def test_pipeline_handles_unseen_categories_and_missing_values(model):
    df = _churn()
    m = fit(df, infer_schema(df, target='churn'), model, **SMALL.get(model, {}))
    new = pd.DataFrame({'age': [np.nan, 30.0, None], 'plan': ['enterprise', None, 'pro'],
                        'signup': pd.to_datetime(['2030-01-01'] * 3)})
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        p = m.predict_proba(new)
    assert p.shape == (3, 2) and np.isfinite(p).all()
    assert evaluate(m, df.drop(columns='churn'), df['churn'])['accuracy'] > 0.8  # it learnt the plan


def test_preprocessor_names_and_drops():
    df = _churn(50)
    pre = build_preprocessor(infer_schema(df, target='churn')).fit(df)
    assert list(pre.get_feature_names_out()) == ['age', 'plan_basic', 'plan_pro', 'plan_team']  # no target, no datetime
    out = pre.transform(df)
    assert list(out.columns) == list(pre.get_feature_names_out()) and not out.isna().any().any()


def test_importance_uses_the_preprocessors_names():
    df = _churn()
    m = fit(df, infer_schema(df, target='churn'), 'random_forest', n_estimators=15)
    imp = feature_importance(m)
    assert imp.index[0] == 'plan_basic' and set(imp.index) == {'age', 'plan_basic', 'plan_pro', 'plan_team'}


def test_fitted_pipeline_pickles(sets):
    m, _ = _fit_eval(sets, 'binary', 'logistic')
    X = sets['binary'][1].drop(columns='target')
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(m)).predict_proba(X), m.predict_proba(X))


def test_modules_do_not_import_mlflow():
    code = ("import sys, mlops_nb.features, mlops_nb.train, mlops_nb.evaluate; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'mlflow' or m == 'matplotlib.pyplot']; "
            "assert not bad, bad")
    subprocess.run([sys.executable, '-c', code], check=True)


def test_plots_show_inline_in_jupyter_without_pyplot(sets):
    from IPython.core.interactiveshell import InteractiveShell
    m, _ = _fit_eval(sets, 'binary', 'logistic')
    test = sets['binary'][1]
    fig = evaluation_plots(m, test.drop(columns='target'), test['target'])['roc']
    data, _ = InteractiveShell.instance().display_formatter.format(fig)
    assert data['image/png'][:8] == PNG_MAGIC
