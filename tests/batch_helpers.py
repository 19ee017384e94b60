"""A registered model and generated inputs for the batch-scoring tests (and bench/batch.py)."""
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = ['x0', 'x1', 'x2', 'x3', 'n_items', 'segment']


def make_rows(n: int, seed: int = 0) -> pd.DataFrame:
    "`n` generated input rows: an id, four floats, a whole number and a category."
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return pd.DataFrame({'id': np.arange(n, dtype=np.int64), 'x0': X[:, 0], 'x1': X[:, 1], 'x2': X[:, 2], 'x3': X[:, 3],
                         'n_items': rng.integers(0, 20, n), 'segment': rng.choice(['a', 'b', 'c'], n)})


def train_and_register(workdir: Path, name: str = 'batchdemo', model: str = 'random_forest', **params):
    "Train a small classifier on generated rows, log it with its schema to the store of `workdir`, make it `NAME@champion`."
    from mlops_nb.core import get_settings
    from mlops_nb.data import infer_schema
    from mlops_nb.registry import register_run_model
    from mlops_nb.tracking import log_model, record, start_run
    from mlops_nb.train import fit
    s = get_settings(cwd=workdir, env={})
    df = make_rows(3000, seed=1)
    df['target'] = ((df.x0 + 0.5 * df.x1 - 0.3 * df.n_items / 10 + (df.segment == 'b')) > 0.2).astype(int)
    df = df.drop(columns='id')
    schema = infer_schema(df, target='target')
    est = fit(df, schema, model=model, **params)
    with start_run(settings=s, run_name='train') as run:
        fn = schema.save(workdir / 'schema.json')
        record('schema.json', fn)
        log_model(est, df[schema.features].head())
    register_run_model(name, run.run_id, s, alias='champion')
    return est, schema, s
