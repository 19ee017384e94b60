"""Benchmark estimated quality before labels: mlops_nb's CBPE against NannyML's CBPE on the same 100k-row windows.

A binary classifier's held-out rows (reference: probabilities, predictions, labels; 100,000 rows) and
analysis windows of 100,000 rows each, written once to Parquet under bench/out/:
  same       the reference's distribution
  shifted    covariate shift towards the decision boundary (accuracy falls, the link x -> y holds)
  skewed     covariate shift away from it (accuracy rises)
  miscal     the same windows scored by a model whose probabilities are over-confident (calibration
             on the reference must repair them)
Labels follow P(y=1 | x) = sigmoid(2x) everywhere, so CBPE's assumption (no concept drift) holds and
its estimate should track the realized value; the realized accuracy and ROC AUC are computed from the
labels, which neither estimator sees.
  mlops_nb   `mlops_nb.monitor.CBPE(classes).fit(ref_proba, ref_y).estimate(window_proba, window_pred)`
  nannyml    NannyML 0.13.1 `CBPE(problem_type='classification_binary', metrics=['accuracy', 'roc_auc'],
             chunk_size=100_000)` fitted on the reference, `.estimate(windows)`. NannyML pins older
             libraries, so it runs in its own virtual environment, bench/out/nannyml-venv (created on
             first use, or --nannyml-python).
Each tool runs in its own fresh process, warms up on a tiny pair (not timed), reads the Parquet files
(not timed), then fits and estimates every window (timed). Reported per window: each estimate, the
realized value, the absolute error, and the time of fit + estimate over all windows, with the ratio of
NannyML's time to mlops_nb's. The run fails (exit 1) if mlops_nb's estimate is off the realized accuracy
by more than 0.01 on any window.

Usage: python bench/quality.py [--rows 100000] [--skip-nannyml] [--nannyml-python PATH]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / 'out'
NANNYML_VENV = OUT / 'nannyml-venv'
WINDOWS = ('same', 'shifted', 'skewed', 'miscal')


def make_data(n: int):
    "reference and windows as Parquet: proba (P(class 1) as the model says), pred, y."
    import numpy as np
    import pandas as pd
    def frame(seed, mu=0.0, sd=1.0, temp=1.0):
        r = np.random.default_rng(seed)
        x = r.normal(mu, sd, n)
        p_true = 1 / (1 + np.exp(-2 * x))
        y = (r.random(n) < p_true).astype(int)
        p_model = 1 / (1 + np.exp(-2 * x * temp))  # temp > 1: over-confident scores, same ranking
        return pd.DataFrame({'proba': p_model, 'pred': (p_model >= 0.5).astype(int), 'y': y})
    frame(1).to_parquet(OUT / f'quality_{n}_reference.parquet')
    frame(1, temp=3.0).to_parquet(OUT / f'quality_{n}_reference_miscal.parquet')
    specs = {'same': dict(seed=2), 'shifted': dict(seed=3, sd=0.5), 'skewed': dict(seed=4, mu=1.0), 'miscal': dict(seed=5, temp=3.0)}
    for w, kw in specs.items(): frame(**kw).to_parquet(OUT / f'quality_{n}_{w}.parquet')


def worker(tool: str, n: int) -> dict:
    import numpy as np
    import pandas as pd
    ref = pd.read_parquet(OUT / f'quality_{n}_reference.parquet')
    ref_m = pd.read_parquet(OUT / f'quality_{n}_reference_miscal.parquet')
    wins = {w: pd.read_parquet(OUT / f'quality_{n}_{w}.parquet') for w in WINDOWS}
    if tool == 'mlops_nb':
        from mlops_nb.monitor import CBPE
        P = lambda d: np.column_stack([1 - d['proba'].to_numpy(), d['proba'].to_numpy()])
        CBPE([0, 1]).fit(P(ref.head(200)), ref['y'].head(200)).estimate(P(ref.head(200)))  # warm-up: sklearn imports
        def run():
            out = {}
            cb = CBPE([0, 1]).fit(P(ref), ref['y'])
            cm = CBPE([0, 1]).fit(P(ref_m), ref_m['y'])
            for w, d in wins.items(): out[w] = (cm if w == 'miscal' else cb).estimate(P(d), d['pred'].to_numpy())
            return out
    elif tool == 'nannyml':
        import warnings; warnings.filterwarnings('ignore')
        import logging; logging.disable(logging.WARNING)
        import nannyml as nml
        def est(r, a):
            e = nml.CBPE(y_pred_proba='proba', y_pred='pred', y_true='y', metrics=['accuracy', 'roc_auc'], chunk_size=len(a),
                         problem_type='classification_binary')
            e.fit(r)
            df = e.estimate(a.drop(columns='y')).filter(period='analysis').to_df()
            return {'accuracy': float(df[('accuracy', 'value')].iloc[0]), 'roc_auc': float(df[('roc_auc', 'value')].iloc[0])}
        est(ref.head(2000), ref.tail(1000))  # warm-up
        def run():
            return {w: est(ref_m if w == 'miscal' else ref, d) for w, d in wins.items()}
    else: raise SystemExit(f'unknown tool {tool}')
    t = time.perf_counter()
    values = run()
    return {'seconds': time.perf_counter() - t, 'values': values}


def realized(n: int) -> dict:
    import pandas as pd
    from sklearn.metrics import roc_auc_score
    out = {}
    for w in WINDOWS:
        d = pd.read_parquet(OUT / f'quality_{n}_{w}.parquet')
        out[w] = {'accuracy': float((d['pred'] == d['y']).mean()), 'roc_auc': float(roc_auc_score(d['y'], d['proba']))}
    return out


def run_tool(tool: str, python: str, n: int) -> dict | None:
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore'}
    r = subprocess.run([python, __file__, '--worker', tool, str(n)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        print(f"  {tool}: FAILED\n{r.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def ensure_nannyml(python: str | None) -> str | None:
    if python: return python
    py = NANNYML_VENV / 'bin' / 'python'
    if not py.exists():
        print(f"creating {NANNYML_VENV} with nannyml==0.13.1 (once; a few minutes) ...", flush=True)
        subprocess.run([sys.executable, '-m', 'venv', str(NANNYML_VENV)], check=True)
        subprocess.run([str(py), '-m', 'pip', 'install', '-q', 'nannyml==0.13.1', 'statsmodels'], check=True)  # nannyml imports statsmodels without requiring it
    return str(py)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rows', type=int, default=100_000)
    ap.add_argument('--skip-nannyml', action='store_true')
    ap.add_argument('--nannyml-python', help='python of an environment with nannyml 0.13')
    ap.add_argument('--worker', nargs=2, metavar=('TOOL', 'ROWS'), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1])))); return 0
    OUT.mkdir(exist_ok=True)
    n = a.rows
    if not all((OUT / f'quality_{n}_{w}.parquet').exists() for w in (*WINDOWS, 'reference', 'reference_miscal')): make_data(n)
    nml_py = None if a.skip_nannyml else ensure_nannyml(a.nannyml_python)
    print(f"estimated quality (CBPE) benchmark: reference and windows of {n:,} rows; {os.cpu_count()} cores "
          f"(shared machine: times are indicative)")
    res = {'mlops_nb': run_tool('mlops_nb', sys.executable, n)}
    if nml_py: res['nannyml'] = run_tool('nannyml', nml_py, n)
    real = realized(n)
    print(f"\n  {'window':<9} {'metric':<9} {'realized':>9} {'mlops_nb':>9} {'|err|':>7} {'nannyml':>9} {'|err|':>7} {'|ours-nml|':>10}")
    bad = res['mlops_nb'] is None
    for w in WINDOWS:
        for m in ('accuracy', 'roc_auc'):
            r = real[w][m]
            o = res['mlops_nb']['values'][w].get(m) if res['mlops_nb'] else None
            k = res['nannyml']['values'][w].get(m) if res.get('nannyml') else None
            f = lambda v: f'{v:9.4f}' if v is not None else f"{'-':>9}"
            e = lambda v: f'{abs(v - r):7.4f}' if v is not None else f"{'-':>7}"
            d = f'{abs(o - k):10.1e}' if o is not None and k is not None else f"{'-':>10}"
            print(f"  {w:<9} {m:<9} {r:9.4f} {f(o)} {e(o)} {f(k)} {e(k)} {d}")
            if m == 'accuracy' and o is not None and abs(o - r) > 0.01: bad = True
    print(f"\n  {'tool':<10} {'seconds (fit + 4 windows)':>26} {'x mlops_nb time':>16}")
    for t, v in res.items():
        if v is None: continue
        print(f"  {t:<10} {v['seconds']:26.3f} {v['seconds'] / res['mlops_nb']['seconds']:15.1f}x")
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
