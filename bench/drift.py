"""Benchmark drift detection: mlops_nb's `drift` against Evidently's DataDriftPreset and a plain per-column SciPy loop.

The same reference/current pair (20 numeric + 5 categorical columns; 4 numeric and 1 categorical
column shifted) at 100,000 and 1,000,000 rows per sample, written once to Parquet under bench/out/,
goes through:
  mlops_nb          `mlops_nb.monitor.drift(ref, cur)` with its defaults: KS (statistic and p-value),
                    Wasserstein / reference std, PSI and Jensen-Shannon for every numeric column;
                    chi-squared, Jensen-Shannon and PSI for every categorical one; the decision by
                    Wasserstein (numeric) and Jensen-Shannon (categorical) above 1,000 rows
  mlops_nb chunked  `drift_chunked(ref.parquet, cur.parquet)`: reads the files itself in 100k-row
                    chunks, never holds a whole sample (time includes reading the files, twice)
  evidently         Evidently 0.7.23 `Report([DataDriftPreset(num_method='wasserstein',
                    cat_method='jensenshannon')])` on `Dataset.from_pandas` of the same frames: the
                    same deciding tests and thresholds (also its defaults at this size). Evidently
                    does not import under pandas 3, so it runs in its own virtual environment,
                    bench/out/evidently-venv, with `pandas<3` (created on first use).
  scipy loop        per column: `ks_2samp` + `wasserstein_distance` (numeric), `chi2_contingency` on
                    the 2xk table (categorical)
Each tool runs in its own fresh process: it imports its library and warms up on a tiny pair (not
timed), reads the Parquet files (not timed, except for the chunked mode), resets the process's
peak RSS (/proc/self/clear_refs), then computes. Reported: wall time of the computation, and peak
RSS during it above the RSS before it ("extra MB": what the computation itself needs on top of the
loaded frames). Values are compared column by column: mlops_nb's deciding score against Evidently's,
and KS / Wasserstein against the SciPy loop; the run fails (exit 1) if they differ by more than 1e-9
(1e-3 for the chunked mode's fine-grid Wasserstein).

Usage: python bench/drift.py [--rows 100000 1000000] [--skip-evidently] [--evidently-python PATH]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / 'out'
EVIDENTLY_VENV = OUT / 'evidently-venv'
N_NUM, N_CAT = 20, 5


def make_pair(n: int, ref_path: Path, cur_path: Path):
    import numpy as np
    import pandas as pd
    def frame(seed, shifted):
        r = np.random.default_rng(seed)
        d = {}
        for i in range(N_NUM):
            shift = 0.3 if shifted and i < 4 else 0.0
            kind = i % 4
            if kind == 0: d[f'num_{i}'] = r.normal(10 + shift * 2, 2, n)
            elif kind == 1: d[f'num_{i}'] = r.lognormal(1 + shift, 0.5, n)
            elif kind == 2: d[f'num_{i}'] = r.uniform(0, 100 * (1 + shift), n)
            else: d[f'num_{i}'] = r.normal(0, 1, n).round(2) + shift  # ties
        for i in range(N_CAT):
            k = 3 + 10 * i
            p = np.linspace(1, 2, k); p /= p.sum()
            if shifted and i == 0: p = p[::-1]
            d[f'cat_{i}'] = r.choice([f'v{j}' for j in range(k)], n, p=p)
        return pd.DataFrame(d)
    frame(0, False).to_parquet(ref_path, row_group_size=200_000)
    frame(1, True).to_parquet(cur_path, row_group_size=200_000)


def _rss_kb(field: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'): return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak():
    try: Path('/proc/self/clear_refs').write_text('5')  # resets VmHWM (peak RSS) on Linux
    except OSError: pass


def _measure(fn):
    _reset_peak()
    base = _rss_kb('VmRSS')
    t = time.perf_counter()
    values = fn()
    sec = time.perf_counter() - t
    return {'seconds': sec, 'peak_mb': _rss_kb('VmHWM') / 1024, 'extra_mb': (_rss_kb('VmHWM') - base) / 1024, 'values': values}


def worker(tool: str, ref_path: str, cur_path: str) -> dict:
    import numpy as np
    import pandas as pd
    num = [f'num_{i}' for i in range(N_NUM)]
    cat = [f'cat_{i}' for i in range(N_CAT)]
    tiny = pd.DataFrame({'num_0': np.arange(2000.0), 'cat_0': ['a', 'b'] * 1000})
    if tool == 'mlops_nb':
        from mlops_nb.monitor import drift
        drift(tiny, tiny.iloc[::-1])  # warm-up: SciPy's lazy imports
        ref, cur = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
        def run():
            res = drift(ref, cur)
            return {c: {'score': d.score, 'stat': d.stat, 'ks': d.stats.get('ks'), 'wasserstein': d.stats.get('wasserstein'),
                        'chisquare': d.stats.get('chisquare'), 'drifted': d.drifted} for c, d in res.columns.items()}
    elif tool == 'mlops_nb_chunked':
        from mlops_nb.monitor import drift_chunked
        drift_chunked(tiny, tiny.iloc[::-1])
        def run():
            res = drift_chunked(ref_path, cur_path)
            return {c: {'score': d.score, 'stat': d.stat, 'drifted': d.drifted} for c, d in res.columns.items()}
    elif tool == 'scipy':
        from scipy import stats
        stats.ks_2samp(tiny.num_0, tiny.num_0); stats.wasserstein_distance(tiny.num_0, tiny.num_0)
        ref, cur = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
        def run():
            out = {}
            for c in num:
                a, b = ref[c].to_numpy(), cur[c].to_numpy()
                out[c] = {'ks': float(stats.ks_2samp(a, b).statistic), 'wasserstein': float(stats.wasserstein_distance(a, b) / np.std(a))}
            for c in cat:
                t = pd.concat([ref[c].value_counts().rename('r'), cur[c].value_counts().rename('c')], axis=1).fillna(0).T.to_numpy()
                out[c] = {'chisquare': float(stats.chi2_contingency(t)[0])}
            return out
    elif tool == 'evidently':
        import warnings; warnings.filterwarnings('ignore')
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
        def evid(r, c, columns):
            d = DataDefinition(numerical_columns=[x for x in columns if x in num], categorical_columns=[x for x in columns if x in cat])
            rep = Report([DataDriftPreset(num_method='wasserstein', cat_method='jensenshannon')])
            return rep.run(current_data=Dataset.from_pandas(c, data_definition=d), reference_data=Dataset.from_pandas(r, data_definition=d))
        evid(tiny, tiny.iloc[::-1], ['num_0', 'cat_0'])
        ref, cur = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
        def run():
            snap = evid(ref, cur, num + cat)
            out = {}
            for m in snap.dict()['metrics']:
                col = m.get('config', {}).get('column')
                if col: out[col] = {'score': float(m['value'])}
            return out
    else: raise SystemExit(f'unknown tool {tool}')
    return _measure(run)


def run_tool(tool: str, python: str, ref: Path, cur: Path) -> dict | None:
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore'}
    r = subprocess.run([python, __file__, '--worker', tool, str(ref), str(cur)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        print(f"  {tool}: FAILED\n{r.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def ensure_evidently(python: str | None) -> str | None:
    if python: return python
    py = EVIDENTLY_VENV / 'bin' / 'python'
    if not py.exists():
        print(f"creating {EVIDENTLY_VENV} with evidently==0.7.23 and pandas<3 (once; a few minutes) ...", flush=True)
        subprocess.run([sys.executable, '-m', 'venv', str(EVIDENTLY_VENV)], check=True)
        subprocess.run([str(py), '-m', 'pip', 'install', '-q', 'evidently==0.7.23', 'pandas<3'], check=True)
    return str(py)


def compare(a: dict, b: dict, key_a: str, key_b: str, cols) -> float:
    return max(abs(a[c][key_a] - b[c][key_b]) for c in cols if a[c].get(key_a) is not None and b[c].get(key_b) is not None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rows', type=int, nargs='+', default=[100_000, 1_000_000])
    ap.add_argument('--skip-evidently', action='store_true')
    ap.add_argument('--evidently-python', help='python of an environment with evidently 0.7 and pandas<3')
    ap.add_argument('--worker', nargs=3, metavar=('TOOL', 'REF', 'CUR'), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker))); return 0
    OUT.mkdir(exist_ok=True)
    evid_py = None if a.skip_evidently else ensure_evidently(a.evidently_python)
    print(f"drift benchmark: {N_NUM} numeric + {N_CAT} categorical columns; {os.cpu_count()} cores (shared machine: figures are indicative)")
    bad = False
    for n in a.rows:
        ref, cur = OUT / f'drift_{n}_ref.parquet', OUT / f'drift_{n}_cur.parquet'
        if not (ref.exists() and cur.exists()): make_pair(n, ref, cur)
        res = {'mlops_nb': run_tool('mlops_nb', sys.executable, ref, cur),
               'mlops_nb chunked': run_tool('mlops_nb_chunked', sys.executable, ref, cur),
               'scipy loop': run_tool('scipy', sys.executable, ref, cur)}
        if evid_py: res['evidently'] = run_tool('evidently', evid_py, ref, cur)
        m = res['mlops_nb']
        print(f"\n{n:,} rows per sample")
        print(f"  {'tool':<18} {'seconds':>9} {'peak MB':>9} {'extra MB':>9} {'x mlops_nb time':>16}")
        for k, r in res.items():
            if r is None: continue
            ratio = r['seconds'] / m['seconds'] if m else float('nan')
            print(f"  {k:<18} {r['seconds']:9.2f} {r['peak_mb']:9.0f} {r['extra_mb']:9.0f} {ratio:15.1f}x")
        if not m: bad = True; continue
        num = [f'num_{i}' for i in range(N_NUM)]; cat = [f'cat_{i}' for i in range(N_CAT)]
        checks = []
        if res['scipy loop']:
            s = res['scipy loop']['values']
            checks += [('KS vs scipy ks_2samp', compare(m['values'], s, 'ks', 'ks', num), 1e-9),
                       ('Wasserstein/std vs scipy', compare(m['values'], s, 'wasserstein', 'wasserstein', num), 1e-9),
                       ('chi-squared vs scipy chi2_contingency', compare(m['values'], s, 'chisquare', 'chisquare', cat), 1e-9)]
        if res.get('evidently'):
            checks.append(('deciding score vs Evidently', compare(m['values'], res['evidently']['values'], 'score', 'score', num + cat), 1e-9))
        if res['mlops_nb chunked']:
            c = res['mlops_nb chunked']['values']
            checks.append(('chunked vs in-memory (JS exact, Wasserstein on a fine grid)', compare(m['values'], c, 'score', 'score', num + cat), 1e-3))
            same = all(m['values'][k]['drifted'] == c[k]['drifted'] for k in num + cat)
            checks.append(('chunked decisions equal', 0.0 if same else 1.0, 0.5))
        for name, diff, tol in checks:
            ok = diff <= tol
            bad |= not ok
            print(f"  {name}: max |diff| = {diff:.2e} {'ok' if ok else 'DIFFERS'}")
        drifted = sorted(k for k, v in m['values'].items() if v['drifted'])
        print(f"  drifted columns (mlops_nb): {', '.join(drifted)}")
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
