"""Benchmark `mlops_nb.tracking.record()` against plain MLflow calls: 1,000 metrics and 100 params per run.

Variants, each writing to its own fresh SQLite store (`sqlite:///<tmp>/mlflow.db`) in its own temp dir:
  plain     `mlflow.log_param` / `mlflow.log_metric`, one call per value, inside `mlflow.start_run()`
  mlops_nb  `record(name, value)`, one call per value, inside `mlops_nb.tracking.start_run(settings=...)`
            (buffered; sent with `log_batch` when the buffer fills and when the run ends)
  log_batch by hand, what a careful user could do: build `Param`/`Metric` lists one value at a time,
            then `MlflowClient.log_batch` (one call for the 100 params, one for the 1,000 metrics, as
            a batch holds at most 1,000 entities) and `set_terminated`
Every run has the same shape: params first (p0..p99 = 'value-0'..'value-99'), then metrics
(m0..m999, seeded random floats, step 0), recorded in that order.

Before timing, each store is created and migrated and the experiment made (`experiment_id`), then one
untimed warm-up run of the variant is logged (imports, engine, caches). Repeats are interleaved
across variants (round-robin) so drift affects all of them alike.
  record s  from the first value recorded to the end of the run: every log call, the flush at run
            end and the run's termination (leaving the `with` block / `set_terminated`)
  run s     the same plus creating the run (for mlops_nb that includes its lineage tags, which call
            git, and the environment.txt artifact; for plain, mlflow's own run-context tags)
Afterwards every timed run is read back with `MlflowClient.get_run` and must hold exactly the
expected metric and param keys and values, and the number of metric rows in SQLite must be 1,000
with every step 0 (catches dropped or doubly-sent points, which `get_run` would hide).
Prints "identical: yes", or the differences and exits 1.

Usage: python bench/record.py [--repeat N] [--plain-repeat N] [--budget SECONDS]
"""
import argparse
import logging
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings

N_METRICS, N_PARAMS = 1000, 100
_rng = random.Random(0)
PARAMS = {f'p{j}': f'value-{j}' for j in range(N_PARAMS)}
METRICS = {f'm{i}': _rng.uniform(-1000, 1000) for i in range(N_METRICS)}


class Store:
    "A fresh SQLite store in its own temp dir, migrated, with the experiment created."
    def __init__(self, name: str):
        from mlops_nb.core import get_settings
        from mlops_nb.tracking import client, experiment_id
        self.name, self.dir = name, tempfile.mkdtemp(prefix=f'bench_record_{name}_')
        self.settings = get_settings(cwd=self.dir, env={})  # sqlite:///<dir>/mlflow.db, no settings.ini above /tmp
        self.uri = self.settings.tracking_uri
        self.client = client(self.settings)
        self.experiment_id = experiment_id(self.settings, mlflow_client=self.client)
        self.run_ids: list[str] = []

    def close(self): shutil.rmtree(self.dir, ignore_errors=True)


def run_plain(store: Store):
    import mlflow
    mlflow.set_tracking_uri(store.uri)
    t0 = time.perf_counter()
    with mlflow.start_run(experiment_id=store.experiment_id) as r:
        t1 = time.perf_counter()
        for k, v in PARAMS.items(): mlflow.log_param(k, v)
        for k, v in METRICS.items(): mlflow.log_metric(k, v)
    t2 = time.perf_counter()
    return r.info.run_id, t2 - t1, t2 - t0


def run_mlops_nb(store: Store):
    from mlops_nb.tracking import record, start_run
    t0 = time.perf_counter()
    with start_run(settings=store.settings) as run:
        t1 = time.perf_counter()
        for k, v in PARAMS.items(): record(k, v)
        for k, v in METRICS.items(): record(k, v)
    t2 = time.perf_counter()
    return run.run_id, t2 - t1, t2 - t0


def run_log_batch(store: Store):
    from mlflow.entities import Metric, Param
    c = store.client
    t0 = time.perf_counter()
    rid = c.create_run(store.experiment_id).info.run_id
    t1 = time.perf_counter()
    params, metrics = [], []
    for k, v in PARAMS.items(): params.append(Param(k, str(v)))
    for k, v in METRICS.items(): metrics.append(Metric(k, float(v), int(time.time() * 1000), 0))
    c.log_batch(rid, params=params)    # <= 100 params per batch
    c.log_batch(rid, metrics=metrics)  # <= 1,000 entities per batch
    c.set_terminated(rid)
    t2 = time.perf_counter()
    return rid, t2 - t1, t2 - t0


VARIANTS = {'plain': ('plain log_param/log_metric', run_plain),
            'mlops_nb': ('mlops_nb record()', run_mlops_nb),
            'log_batch': ('MlflowClient.log_batch by hand', run_log_batch)}


def check(store: Store, rid: str) -> list[str]:
    "Differences between run `rid` and the expected values (empty when identical)."
    r = store.client.get_run(rid)
    got_m, got_p = dict(r.data.metrics), dict(r.data.params)
    out = []
    for what, got, want in (('metric', got_m, METRICS), ('param', got_p, PARAMS)):
        for k in sorted(set(want) - set(got)): out.append(f"{store.name} run {rid}: {what} {k} missing")
        for k in sorted(set(got) - set(want)): out.append(f"{store.name} run {rid}: unexpected {what} {k}={got[k]!r}")
        for k in sorted(set(got) & set(want)):
            if got[k] != want[k]: out.append(f"{store.name} run {rid}: {what} {k}={got[k]!r}, expected {want[k]!r}")
    if r.info.status != 'FINISHED': out.append(f"{store.name} run {rid}: status {r.info.status}")
    db = store.uri[len('sqlite:///'):]
    with sqlite3.connect(db) as con:
        n, nonzero = con.execute('SELECT COUNT(*), COALESCE(SUM(step != 0), 0) FROM metrics WHERE run_uuid = ?',
                                 (rid,)).fetchone()
    if n != N_METRICS: out.append(f"{store.name} run {rid}: {n} metric rows in SQLite, expected {N_METRICS}")
    if nonzero: out.append(f"{store.name} run {rid}: {nonzero} metric rows with a step other than 0")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeat', type=int, default=3, help='timed runs per variant (default 3)')
    ap.add_argument('--plain-repeat', type=int, default=None,
                    help='timed runs of the plain variant; default: --repeat, lowered to fit --budget')
    ap.add_argument('--budget', type=float, default=150,
                    help='seconds the plain variant may take in all when --plain-repeat is not given (default 150)')
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    import mlflow
    import mlops_nb.tracking  # noqa: F401  (imports first: mlflow sets its loggers' levels on import)
    for name in ('mlflow', 'alembic'): logging.getLogger(name).setLevel(logging.WARNING)  # no migration chatter

    started = time.perf_counter()
    stores = {k: Store(k) for k in VARIANTS}
    try:
        warm = {}
        for k, (_, fn) in VARIANTS.items(): warm[k] = fn(stores[k])[2]  # untimed warm-up run
        reps = {k: a.repeat for k in VARIANTS}
        note = None
        if a.plain_repeat is not None: reps['plain'] = a.plain_repeat
        elif warm['plain'] * a.repeat > a.budget:
            reps['plain'] = max(1, min(a.repeat, int(a.budget // warm['plain'])))
            if reps['plain'] < a.repeat:
                note = (f"plain variant: {reps['plain']} timed run(s) instead of {a.repeat}, as its warm-up run "
                        f"took {warm['plain']:.1f} s (budget {a.budget:.0f} s; --plain-repeat to override)")
        rec = {k: [] for k in VARIANTS}
        whole = {k: [] for k in VARIANTS}
        for i in range(max(reps.values())):
            for k, (_, fn) in VARIANTS.items():
                if i >= reps[k]: continue
                rid, r, w = fn(stores[k])
                stores[k].run_ids.append(rid)
                rec[k].append(r); whole[k].append(w)

        diffs = [d for k in VARIANTS for rid in stores[k].run_ids for d in check(stores[k], rid)]

        print(f"recording {N_METRICS:,} metrics + {N_PARAMS} params per run, one call per value, "
              f"each variant on its own SQLite store")
        print(f"mlflow {mlflow.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
              f"warm-up run per variant not timed")
        if note: print(note)
        med = {k: statistics.median(v) for k, v in rec.items()}
        wmed = {k: statistics.median(v) for k, v in whole.items()}
        head = ('variant', 'runs', 'record best s', 'record median s', 'run median s',
                'plain/this (record)', 'plain/this (run)')
        rows = [(label, str(len(rec[k])), f"{min(rec[k]):.3f}", f"{med[k]:.3f}", f"{wmed[k]:.3f}",
                 f"{med['plain'] / med[k]:.1f}x", f"{wmed['plain'] / wmed[k]:.1f}x")
                for k, (label, _) in VARIANTS.items()]
        w = [max(len(x) for x in col) for col in zip(head, *rows)]
        for row in (head, *rows):
            print('  '.join(x.ljust(w[i]) if i == 0 else x.rjust(w[i]) for i, x in enumerate(row)))
        print(f"ratio plain/mlops_nb (record median): {med['plain'] / med['mlops_nb']:.1f}x; "
              f"plain/log_batch: {med['plain'] / med['log_batch']:.1f}x; "
              f"mlops_nb/log_batch: {med['mlops_nb'] / med['log_batch']:.2f}x")
        print("record s: first value recorded -> run ended (flush included); run s: also creating the run "
              "(mlops_nb: lineage tags via git, environment.txt artifact)")
        print(f"total benchmark time: {time.perf_counter() - started:.0f} s")
        if diffs:
            print(f"identical: no ({len(diffs)} difference(s))")
            for d in diffs[:50]: print('  ' + d)
            if len(diffs) > 50: print(f"  ... and {len(diffs) - 50} more")
            return 1
        n = sum(len(s.run_ids) for s in stores.values())
        print(f"identical: yes ({n} timed runs checked: {N_METRICS} metrics and {N_PARAMS} params each, "
              f"same keys and values in every store)")
        return 0
    finally:
        for s in stores.values(): s.close()


if __name__ == '__main__':
    sys.exit(main())
