"""Benchmark `mlops_nb.data.fingerprint` against peers on a 1,000,000 x 20 frame.

Peers, measured in the same run on the same seeded frame:
  naive    hashlib.sha256(pd.util.hash_pandas_object(df).values)  (pandas' row hashes, index included)
  parquet  hashlib.sha256(df.to_parquet())                          (serialise, then hash the bytes)
  joblib   joblib.hash(df)                                           (pickle-based; skipped if not installed)

Each method runs in its own child process, so memory figures do not leak from one to the next:
  RSS delta  growth of peak RSS (resource.getrusage ru_maxrss) over the first call, with the peak
             reset just before it through /proc/self/clear_refs where Linux allows, so the frame's
             own construction does not hide it;
  traced     tracemalloc peak over a second call (Python and NumPy allocations; Arrow's own allocator
             is invisible to it, which is why RSS delta is reported too);
  time       best and median of 3 further calls, without tracing.
Usage: python bench/fingerprint.py [--rows N]. Prints a table; exits 0.
"""
import argparse
import gc
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc

METHODS = ('fingerprint', 'fingerprint(order_sensitive=False)', 'naive', 'parquet', 'joblib')


def build(rows: int):
    "1M x 20, seeded: 8 float, 6 int, 3 category and 3 text columns (text first: its build transients stay below the final size)."
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(0)
    cols = {}
    cols['id'] = pd.Series(rng.integers(0, 10**12, rows)).astype(str).map('u{}'.format)    # unique-ish ids
    words = np.array([f'word{i}' for i in range(50)], dtype=object)
    for i in range(2): cols[f'text{i}'] = pd.Series(words[rng.integers(0, 50, rows)]).astype('str')
    for i in range(3): cols[f'cat{i}'] = pd.Categorical.from_codes(rng.integers(0, 12, rows), [f'c{k}' for k in range(12)])
    for i in range(8): cols[f'f{i}'] = rng.normal(size=rows)
    for i in range(6): cols[f'i{i}'] = rng.integers(-10**6, 10**6, rows)
    return pd.DataFrame(cols, copy=False)


def method(name: str):
    import pandas as pd
    from mlops_nb.data import fingerprint
    if name == 'fingerprint': return fingerprint
    if name == 'fingerprint(order_sensitive=False)': return lambda df: fingerprint(df, order_sensitive=False)
    if name == 'naive': return lambda df: hashlib.sha256(pd.util.hash_pandas_object(df).values).hexdigest()
    if name == 'parquet': return lambda df: hashlib.sha256(df.to_parquet()).hexdigest()
    if name == 'joblib':
        import joblib
        return joblib.hash


def maxrss_mb() -> float: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        return True
    except OSError: return False


def child(name: str, rows: int) -> dict:
    try: fn = method(name)
    except ImportError as e: return {'method': name, 'skipped': str(e)}
    df = build(rows)
    fn(df.head(1000))  # warm imports and caches outside the measurement
    gc.collect()
    reset = reset_peak()
    before = maxrss_mb()
    digest = fn(df)
    rss = maxrss_mb() - before
    gc.collect()
    tracemalloc.start()
    fn(df)
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    times = []
    for _ in range(3):
        t = time.perf_counter(); fn(df); times.append(time.perf_counter() - t)
    return dict(method=name, best=min(times), median=statistics.median(times), rss=rss, traced=traced,
                reset=reset, digest=str(digest)[:16], frame_mb=df.memory_usage(deep=True).sum() / 2**20)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('--rows', type=int, default=1_000_000)
    ap.add_argument('--child')
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.rows)))
        return 0
    res = []
    for m in METHODS:
        r = subprocess.run([sys.executable, __file__, '--child', m, '--rows', str(a.rows)], capture_output=True, text=True)
        if r.returncode:
            res.append({'method': m, 'skipped': r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f'exit {r.returncode}'})
        else: res.append(json.loads(r.stdout.strip().splitlines()[-1]))
    ok = [r for r in res if 'skipped' not in r]
    base = next(r for r in ok if r['method'] == 'fingerprint')
    import pandas as pd
    print(f"frame: {a.rows:,} rows x 20 columns (8 float64, 6 int64, 3 category, 3 text incl. 1 unique id), "
          f"{base['frame_mb']:.0f} MB in memory; pandas {pd.__version__}, Python {sys.version.split()[0]}")
    print(f"peak reset before the RSS measurement: {'yes' if base['reset'] else 'no (RSS delta is a lower bound)'}")
    head = ('method', 'best s', 'median s', 'time x fp', 'traced MB', 'RSS delta MB', 'digest')
    rows = [(r['method'], f"{r['best']:.3f}", f"{r['median']:.3f}", f"{r['median'] / base['median']:.2f}",
             f"{r['traced']:.0f}", f"{r['rss']:.0f}", r['digest']) for r in ok]
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print('  '.join(str(x).ljust(w[i]) if i in (0, 6) else str(x).rjust(w[i]) for i, x in enumerate(row)))
    for r in res:
        if 'skipped' in r: print(f"skipped {r['method']}: {r['skipped']}")
    print("time x fp: median time relative to fingerprint(df) (above 1 means slower than fingerprint).")
    return 0


if __name__ == '__main__':
    sys.exit(main())
