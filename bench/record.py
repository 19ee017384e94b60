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

Part 2, record() inside a job vs outside one: the same two loops of --job-calls calls each (default
100,000), in each of
  outside   this process, inside `mlops_nb.tracking.start_run(settings=...)` on a fresh SQLite store
  job       a job notebook executed by `mlops-nb run NB --json` (default engine), on another fresh store
  metric    `record('loss', i * 1e-3)`: a metric series of that many steps. Includes the batches sent
            while the loop runs (one `log_batch` per 1,000 values), so it is mostly SQLite's time
  same      `record('mode', 'fast')`, the same param again: nothing new to send, so this is record()'s
            own cost per call (finding the run, the value's kind, redaction, the display decision)
Each loop is timed with `time.perf_counter()` around the same code in both places (the job records
its loop times as metrics `bench_metric_s` and `bench_same_s`), so job start-up is not part of it.
Repeats are interleaved.
Afterwards each run must hold exactly --job-calls rows of `loss` in SQLite with steps 0..N-1, and the
loop cell of each executed notebook must have no output (record() adds no display output in a job).
Prints the median per-call cost of each and the ratio job/outside. MLflow telemetry is off in both.

Usage: python bench/record.py [--repeat N] [--plain-repeat N] [--budget SECONDS] [--job-calls N] [--job-repeat N]
       (--job-calls 0 skips part 2; --only-job skips part 1)
"""
import argparse
import json
import logging
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

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


LOOP = ("import time\nimport mlops_nb\nt0 = time.perf_counter()\n"
        "for i in range(n): mlops_nb.record('loss', i * 1e-3)\n"
        "metric_s = time.perf_counter() - t0\nt0 = time.perf_counter()\n"
        "for i in range(n): mlops_nb.record('mode', 'fast')\n"
        "same_s = time.perf_counter() - t0")
LOOPS = {'metric': "record('loss', i * 1e-3), a metric series", 'same': "record('mode', 'fast'), the same param again"}


def job_notebook(path: Path) -> Path:
    "The job: a parameters cell (`n`), the timed loops, then their times recorded as metrics."
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    cells = [new_code_cell('n: int = 1000  # record() calls', metadata={'tags': ['parameters']}), new_code_cell(LOOP),
             new_code_cell("mlops_nb.record('bench_metric_s', metric_s)\nmlops_nb.record('bench_same_s', same_s)")]
    nb = new_notebook(cells=cells, metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    nbformat.write(nb, str(path))
    return path


def loop_outside(store: Store, n: int):
    "The loops in this process, in a run of its own; returns (run id, {loop: seconds})."
    from mlops_nb.tracking import start_run
    scope = {'n': n}
    with start_run(settings=store.settings) as run:
        exec(LOOP, scope)
    return run.run_id, {k: scope[f'{k}_s'] for k in LOOPS}


def loop_in_job(store: Store, nb: Path, n: int):
    "The loops in a job that `mlops-nb run` executes; returns (run id, {loop: seconds}, executed notebook)."
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'MLOPS_NB_'))}
    env.update(MLFLOW_TRACKING_URI=store.uri, MLFLOW_DISABLE_TELEMETRY='true')
    exe = Path(sys.executable).parent / 'mlops-nb'
    r = subprocess.run([str(exe), 'run', str(nb), '-p', 'n', str(n), '--json'], cwd=store.dir, env=env,
                       capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"mlops-nb run failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    res = json.loads(r.stdout)
    return res['run_id'], {k: res['metrics'][f'bench_{k}_s'] for k in LOOPS}, Path(res['output'])


def check_loop(store: Store, rid: str, n: int, output: Path | None = None) -> list[str]:
    "Differences from what the loop must leave: n rows of `loss` with steps 0..n-1; no output in the job's loop cell."
    out = []
    with sqlite3.connect(store.uri[len('sqlite:///'):]) as con:
        rows, lo, hi, distinct = con.execute("SELECT COUNT(*), MIN(step), MAX(step), COUNT(DISTINCT step) FROM metrics "
                                             "WHERE run_uuid = ? AND key = 'loss'", (rid,)).fetchone()
    if (rows, lo, hi, distinct) != (n, 0, n - 1, n):
        out.append(f"{store.name} run {rid}: {rows} rows of loss, steps {lo}..{hi} ({distinct} distinct), expected {n} rows 0..{n - 1}")
    if output is not None:
        import nbformat
        cell = nbformat.read(str(output), as_version=4).cells[2]  # parameters, injected parameters, loop
        if 'record(' not in cell.source: out.append(f"{output}: cell 2 is not the loop")
        elif cell.outputs: out.append(f"{output}: the loop cell has {len(cell.outputs)} outputs, expected none")
    return out


def job_part(calls: int, repeat: int) -> int:
    "Part 2: the same record() loops outside any job and inside one, interleaved; prints the table and the ratios."
    started = time.perf_counter()
    stores = {k: Store(k) for k in ('outside', 'job')}
    nb = job_notebook(Path(stores['job'].dir) / 'record_loop.ipynb')
    try:
        loop_outside(stores['outside'], 1000); loop_in_job(stores['job'], nb, 1000)  # warm-up runs, not timed
        times = {(w, k): [] for w in stores for k in LOOPS}
        diffs, sizes = [], []
        for _ in range(repeat):
            rid, t = loop_outside(stores['outside'], calls)
            diffs += check_loop(stores['outside'], rid, calls)
            for k in LOOPS: times['outside', k].append(t[k])
            rid, t, output = loop_in_job(stores['job'], nb, calls)
            diffs += check_loop(stores['job'], rid, calls, output); sizes.append(output.stat().st_size)
            for k in LOOPS: times['job', k].append(t[k])
        med = {k: statistics.median(v) for k, v in times.items()}
        print()
        print(f"record() inside a job vs outside: {calls:,} calls per loop and run, timed around the loop; "
              f"{repeat} run(s) each, interleaved, warm-up not timed")
        head = ('loop', 'where', 'runs', 'best s', 'median s', 'per call us (median)')
        places = {'outside': 'outside a job (start_run here)', 'job': 'inside a job (mlops-nb run)'}
        rows = [(LOOPS[k], places[w], str(len(times[w, k])), f"{min(times[w, k]):.3f}", f"{med[w, k]:.3f}",
                 f"{med[w, k] / calls * 1e6:.2f}") for k in LOOPS for w in places]
        w = [max(len(x) for x in col) for col in zip(head, *rows)]
        for row in (head, *rows):
            print('  '.join(x.ljust(w[i]) if i < 2 else x.rjust(w[i]) for i, x in enumerate(row)))
        print('ratio job/outside (median): ' + '; '.join(f"{k} {med['job', k] / med['outside', k]:.2f}x" for k in LOOPS)
              + f"; executed job notebook: {max(sizes) / 1024:.0f} KiB at most")
        print(f"part 2 time: {time.perf_counter() - started:.0f} s")
        if diffs:
            print(f"identical: no ({len(diffs)} difference(s))")
            for d in diffs[:20]: print('  ' + d)
            return 1
        print(f"identical: yes ({2 * repeat} timed runs hold {calls:,} rows of loss with steps 0..{calls - 1:,}; "
              f"no output in any job's loop cell)")
        return 0
    finally:
        for s in stores.values(): s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeat', type=int, default=3, help='timed runs per variant (default 3)')
    ap.add_argument('--plain-repeat', type=int, default=None,
                    help='timed runs of the plain variant; default: --repeat, lowered to fit --budget')
    ap.add_argument('--budget', type=float, default=150,
                    help='seconds the plain variant may take in all when --plain-repeat is not given (default 150)')
    ap.add_argument('--job-calls', type=int, default=100_000, help='record() calls per run in part 2 (default 100,000; 0 skips it)')
    ap.add_argument('--job-repeat', type=int, default=3, help='timed runs per place in part 2 (default 3)')
    ap.add_argument('--only-job', action='store_true', help='run part 2 only')
    a = ap.parse_args()
    os.environ['MLFLOW_DISABLE_TELEMETRY'] = 'true'  # before mlflow is imported; the jobs of part 2 get it too
    warnings.filterwarnings('ignore')
    import mlflow
    import mlops_nb.tracking  # noqa: F401  (imports first: mlflow sets its loggers' levels on import)
    for name in ('mlflow', 'alembic'): logging.getLogger(name).setLevel(logging.WARNING)  # no migration chatter
    rc = 0 if a.only_job else batch_part(a)
    if a.job_calls: rc = job_part(a.job_calls, a.job_repeat) or rc
    return rc


def batch_part(a) -> int:
    "Part 1: 1,000 metrics and 100 params per run, plain MLflow calls vs record() vs log_batch by hand."
    import mlflow
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
