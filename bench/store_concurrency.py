"""Benchmark concurrent writers on one SQLite store: plain `MlflowClient` vs `mlops_nb.tracking.client()`.

N processes (multiprocessing 'spawn') start together (each imports MLflow, opens the store, reports
ready, then waits for one shared event) and make the same calls on one fresh store
`sqlite:///<tmp>/mlflow.db`, which the parent creates, migrates and gives its experiment first:
  per process, RUNS times: create_run (3 tags), then STEPS times log_batch (METRICS metrics at that step)
  and set_tag, then set_terminated('FINISHED').
Variants, each on its own fresh store, run one after the other (plain first):
  plain     `MlflowClient(tracking_uri=...)`: MLflow as is (SQLite busy timeout 20 s, deferred transactions)
  mlops_nb  `mlops_nb.tracking.client(settings)`: writes hold the store's write lock (flock) and retry
            on "database is locked"
A call that raises is counted (and "database is locked" ones separately) and the worker goes on, as a
job that caught the error would; a run whose create_run failed is lost with all its calls.
Afterwards the store is read back directly (sqlite3): runs that exist and are FINISHED, metric rows
(must be RUNS*STEPS*3 per process), tags. Wall time is from the start event to the last process done.

Usage: python bench/store_concurrency.py [--procs N] [--runs R] [--steps S] [--metrics M] [--repeat K]
"""
import argparse
import multiprocessing as mp
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings



def _worker(variant: str, uri: str, eid: str, runs: int, steps: int, metrics: int, ready, go, out):
    import logging
    warnings.filterwarnings('ignore')
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    logging.getLogger('mlflow').setLevel(logging.CRITICAL)  # MLflow logs each OperationalError with its traceback
    if variant == 'plain': c = MlflowClient(tracking_uri=uri)
    else:
        from mlops_nb.core import get_settings
        from mlops_nb.tracking import client
        c = client(get_settings(env={'MLFLOW_TRACKING_URI': uri}))
    c.get_experiment(eid)  # open the engine before the clock starts
    stats = dict(calls=0, locked=0, other=0, first_error='', run_ids=[], latencies=[])

    def call(fn, *args, **kwargs):
        stats['calls'] += 1
        t = time.perf_counter()
        try: return fn(*args, **kwargs)
        except Exception as e:
            if 'database is locked' in str(e): stats['locked'] += 1
            else: stats['other'] += 1
            stats['first_error'] = stats['first_error'] or f'{type(e).__name__}: {str(e)[:200]}'
        finally: stats['latencies'].append(time.perf_counter() - t)

    ready.put(os.getpid())
    go.wait()
    t0 = time.perf_counter()
    for r in range(runs):
        run = call(c.create_run, eid, tags={'bench.proc': str(os.getpid()), 'bench.run': str(r), 'bench.variant': variant})
        if run is None: continue
        rid = run.info.run_id
        stats['run_ids'].append(rid)
        for i in range(steps):
            ts = int(time.time() * 1000)
            call(c.log_batch, rid, metrics=[Metric(f'm{j}', float(i * metrics + j), ts, i) for j in range(metrics)])
            call(c.set_tag, rid, 'bench.step', str(i))
        call(c.set_terminated, rid, 'FINISHED')
    stats['elapsed'] = time.perf_counter() - t0
    out.put(stats)


def run_variant(variant: str, procs: int, runs: int, steps: int, metrics: int = 3) -> dict:
    "Fresh store, `procs` workers started together; returns timings, errors and what the store holds."
    from mlops_nb.core import get_settings
    from mlops_nb.tracking import client, experiment_id
    d = tempfile.mkdtemp(prefix=f'bench_conc_{variant}_')
    try:
        s = get_settings(cwd=d, env={})
        eid = experiment_id(s, mlflow_client=client(s))  # store created and migrated before any worker starts
        ctx = mp.get_context('spawn')
        ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        ps = [ctx.Process(target=_worker, args=(variant, s.tracking_uri, eid, runs, steps, metrics, ready, go, out)) for _ in range(procs)]
        for p in ps: p.start()
        for _ in ps: ready.get(timeout=120)
        t0 = time.perf_counter()
        go.set()
        res = [out.get(timeout=1800) for _ in ps]
        wall = time.perf_counter() - t0
        for p in ps: p.join()
        db = s.tracking_uri[len('sqlite:///'):]
        with sqlite3.connect(db) as con:
            status = dict(con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
            metric_rows = con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
            step_tags = con.execute("SELECT COUNT(*) FROM tags WHERE key = 'bench.step'").fetchone()[0]
        lat = sorted(x for r in res for x in r['latencies'])
        return dict(wall=wall, calls=sum(r['calls'] for r in res), locked=sum(r['locked'] for r in res),
                    other=sum(r['other'] for r in res), first_error=next((r['first_error'] for r in res if r['first_error']), ''),
                    finished=status.get('FINISHED', 0), running=status.get('RUNNING', 0), metric_rows=metric_rows,
                    step_tags=step_tags, p50=lat[len(lat) // 2], p99=lat[min(len(lat) - 1, int(len(lat) * 0.99))], max=lat[-1])
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--procs', type=int, default=8, help='concurrent processes (default 8)')
    ap.add_argument('--runs', type=int, default=4, help='runs per process (default 4)')
    ap.add_argument('--steps', type=int, default=50, help='log_batch + set_tag pairs per run (default 50)')
    ap.add_argument('--metrics', type=int, default=3, help='metrics per log_batch (default 3; mlops_nb flushes up to 1,000)')
    ap.add_argument('--repeat', type=int, default=1, help='rounds of (plain, mlops_nb), each on fresh stores (default 1)')
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    import logging
    import mlflow
    import mlops_nb.tracking  # noqa: F401
    for name in ('mlflow', 'alembic'): logging.getLogger(name).setLevel(logging.WARNING)

    want_runs = a.procs * a.runs
    want_calls = want_runs * (2 + 2 * a.steps)
    print(f"{a.procs} processes x {a.runs} runs x {a.steps} steps (log_batch of {a.metrics} metrics + set_tag), "
          f"{want_calls:,} write calls per variant; one fresh SQLite store per variant and round")
    print(f"mlflow {mlflow.__version__}, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPUs")
    head = ('variant', 'wall s', 'calls/s', 'p50 ms', 'p99 ms', 'max ms', 'locked', 'other err', 'runs FINISHED',
            'metric rows', 'step tags')
    rows, walls, bad = [], {'plain': [], 'mlops_nb': []}, 0
    for k in range(a.repeat):
        for v in ('plain', 'mlops_nb'):
            r = run_variant(v, a.procs, a.runs, a.steps, a.metrics)
            walls[v].append(r['wall'])
            rows.append((v, f"{r['wall']:.2f}", f"{r['calls'] / r['wall']:.0f}", f"{r['p50'] * 1e3:.1f}", f"{r['p99'] * 1e3:.0f}",
                         f"{r['max'] * 1e3:.0f}", str(r['locked']), str(r['other']), f"{r['finished']}/{want_runs}",
                         f"{r['metric_rows']}/{want_runs * a.steps * a.metrics}", f"{r['step_tags']}/{want_runs}"))
            if r['first_error']: rows[-1] += (f"first error: {r['first_error'][:150]}",)
            if v == 'mlops_nb' and (r['locked'] or r['other'] or r['finished'] != want_runs
                                    or r['metric_rows'] != want_runs * a.steps * a.metrics): bad += 1
    w = [max(len(row[i]) for row in (head, *rows) if i < len(row)) for i in range(len(head))]
    for row in (head, *rows):
        print('  '.join(x.ljust(w[i]) if i == 0 else x.rjust(w[i]) for i, x in enumerate(row[:len(head)])))
        for extra in row[len(head):]: print('    ' + extra)
    mp_, ml = statistics.median(walls['plain']), statistics.median(walls['mlops_nb'])
    print(f"median wall: plain {mp_:.2f} s, mlops_nb {ml:.2f} s; mlops_nb/plain = {ml / mp_:.2f}x")
    print("mlops_nb: " + ("no call failed, nothing lost" if not bad else f"{bad} round(s) with failed calls or lost data"))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
