"""Sweeps: `mlops-nb sweep` against what users do by hand, in the same run.

Two notebooks (see bench/jobs.py): the *trivial* one (one cell computing and recording a number), swept over 8 and
16 values, and the *short* one (a logistic regression on iris), a 16-job grid of `C` (4 values) by `seed` (4 values).
For each:
- `mlops-nb sweep NB --grid ... --workers 2`: parent + child runs, summary, best run; with a cold worker (the
  command starts the project's warm worker) and a warm one (already running);
- (a) a sequential loop of `papermill` calls: untracked for the trivial notebook, logging to MLflow by hand for the short one;
- (b) the same papermill calls in a 2-process pool.

Usage: python bench/sweep.py [--repeat 1] [--workers 2] [--only trivial|short]   (prints a table and the ratios)

Tuning (`python bench/sweep.py --tuning [--seeds 3] [--budget 30]`): a notebook whose score is a smooth function of two
parameters with a known optimum (x=0.3, y=0.7) plus a little seeded noise, reporting 6 intermediate values;
- distance to the optimum against budget: `--search tpe` against `--search random` with the same budget and seed, the
  distance of the best trial among the first 10, 20, ... trials, median over seeds (ratio random / tpe: higher = TPE
  closer);
- wall time of a TPE sweep with `--prune median` against the same sweep without, each step taking 0.3 s (ratio
  unpruned / pruned), and the steps each computed.
Each variant writes to its own fresh SQLite store created before timing starts; after timing, each tracked
variant's store is checked to hold one FINISHED run per job with the notebook's metric, and each untracked
variant to have written every output notebook.
"""
import argparse
import concurrent.futures as cf
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from jobs import BIN, BY_HAND, TRACKED, TRIVIAL, env_for, fresh_store, notebook  # noqa: E402

SHORT_GRID = {'C': ['0.01', '0.1', '1', '10'], 'seed': ['0', '1', '2', '3']}


def papermill_cmd(nb, out, combo):
    return [str(BIN / 'papermill'), str(nb), str(out), '--no-progress-bar', *itertools.chain(*(('-p', k, v) for k, v in combo.items()))]


RETRIES = []  # papermill calls rerun because their kernel died at start (two kernels starting at once can race for ports)


def run(cmd, cwd, env):
    for attempt in range(3):
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        if not r.returncode: return
        if 'Kernel died before replying to kernel_info' not in r.stderr: break
        RETRIES.append(' '.join(map(str, cmd[:2])))  # as a user would: run it again
    raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def finished_runs(uri, metric) -> int:
    from mlflow import MlflowClient
    c = MlflowClient(uri)
    runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id], max_results=1000)]
    return sum(r.info.status == 'FINISHED' and metric in r.data.metrics for r in runs)


def cases(root: Path, only: str | None):
    "(label, tracked notebook, papermill notebook, grid, metric): what is swept."
    trivial = notebook(root / 'trivial.ipynb', TRIVIAL)
    out = []
    if only in (None, 'trivial'):
        out += [(f'trivial x{n}', trivial, trivial, {'C': [str(i) for i in range(1, n + 1)]}, 'y') for n in (8, 16)]
    if only in (None, 'short'):
        out.append(('short x16', notebook(root / 'short.ipynb', TRACKED), notebook(root / 'by_hand.ipynb', BY_HAND), SHORT_GRID, 'accuracy'))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeat', type=int, default=1)
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--only', choices=('trivial', 'short'))
    ap.add_argument('--tuning', action='store_true', help='measure tuning sweeps instead (see above)')
    ap.add_argument('--seeds', type=int, default=3, help='seeds of the tuning comparison')
    ap.add_argument('--budget', type=int, default=30, help='trials of each tuning sweep')
    ap.add_argument('--part', choices=('distance', 'prune'), help='only one half of --tuning')
    a = ap.parse_args()
    if a.tuning: return tuning(a)
    root = Path(tempfile.mkdtemp(prefix='bench_sweep_'))
    mn = str(BIN / 'mlops-nb')
    times, checks = {}, {}
    for label, tracked, by_hand, grid, metric in cases(root, a.only):
        combos = [dict(zip(grid, v)) for v in itertools.product(*grid.values())]
        flags = list(itertools.chain(*(('--grid', f"{k}={','.join(v)}") for k, v in grid.items())))
        sweep_cmd = [mn, 'sweep', str(tracked), *flags, '--workers', str(a.workers), '--metric', metric, '--json']
        hand = 'untracked' if by_hand == tracked else 'MLflow by hand'

        def sweep(d, env): run(sweep_cmd, d, env)
        def loop(d, env):
            for i, c in enumerate(combos): run(papermill_cmd(by_hand, d / f'out{i}.ipynb', c), d, env)
        def pool(d, env):
            with cf.ThreadPoolExecutor(a.workers) as ex:  # threads only wait: each papermill call is its own process
                list(ex.map(lambda ic: run(papermill_cmd(by_hand, d / f'out{ic[0]}.ipynb', ic[1]), d, env), enumerate(combos)))
        warm = [[mn, 'worker', 'start'], sweep_cmd]  # untimed: the worker is up and has run a sweep
        variants = {f'{label}: mlops-nb sweep, cold worker': ((), sweep), f'{label}: mlops-nb sweep, warm worker': (warm, sweep),
                    f'{label}: (a) papermill loop, {hand}': ((), loop), f'{label}: (b) papermill {a.workers}-process pool, {hand}': ((), pool)}
        for rep in range(a.repeat):
            for i, (name, (prep, fn)) in enumerate(variants.items()):
                d = root / f'{label.replace(" ", "_")}-{rep}-{i}'
                uri = fresh_store(d)
                env = env_for(d, uri, by_hand)
                for c in prep: run(c, d, env)
                before = finished_runs(uri, metric)
                t = time.perf_counter(); fn(d, env); times.setdefault(name, []).append(time.perf_counter() - t)
                subprocess.run([mn, 'worker', 'stop', '--force'], cwd=d, env=env, capture_output=True)
                tracked_variant = 'mlops-nb' in name or hand != 'untracked'
                checks[name] = (finished_runs(uri, metric) - before if tracked_variant else len(list(d.glob('out*.ipynb'))), len(combos))
                print(f"  {name}: {times[name][-1]:.1f}s, {checks[name][0]}/{len(combos)} {'runs' if tracked_variant else 'notebooks'} ok",
                      file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'variant':<60} {'median s':>9} {'ok':>7}")
    for k, v in med.items(): print(f"{k:<60} {v:9.1f} {checks[k][0]:>3}/{checks[k][1]}")
    if RETRIES: print(f"\n{len(RETRIES)} papermill call(s) rerun after their kernel died at start (timed, as a user would rerun them)")
    print('\nratios (higher = mlops-nb sweep faster):')
    for label in dict.fromkeys(k.split(':')[0] for k in med):
        ks = [k for k in med if k.startswith(label + ':')]
        for s in ks[:2]:
            print(f"  {label}: (a) loop / sweep {s.split(', ')[-1]}: {med[ks[2]] / med[s]:.2f}x    "
                  f"(b) pool / sweep {s.split(', ')[-1]}: {med[ks[3]] / med[s]:.2f}x")


QUADRATIC = ('import random, time, mlops_nb\nrng = random.Random(f"{x:.9f}/{y:.9f}/{seed}")\n'
             'target = -((x - 0.3) ** 2 + (y - 0.7) ** 2)\n'
             'for step in range(steps):\n    time.sleep(pause)\n'
             '    mlops_nb.report(target - 0.2 * (steps - 1 - step) / steps + rng.gauss(0, 0.002), step)\n'
             'mlops_nb.record("score", target + rng.gauss(0, 0.002))')
QPARAMS = 'x: float = 0.5\ny: float = 0.5\nsteps: int = 6\npause: float = 0.0\nseed: int = 0'


def _tuning_sweep(mn, nb, d, env, *flags):
    "Run one tuning sweep; (seconds, its JSON result)."
    import json
    t = time.perf_counter()
    r = subprocess.run([mn, 'sweep', str(nb), '--space', 'x=uniform:0:1', '--space', 'y=uniform:0:1', '--metric', 'score', '--json', *flags],
                       cwd=d, env=env, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"sweep {' '.join(flags)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t, json.loads(r.stdout)


def _distance_by_budget(res, budgets):
    "Distance to the optimum of the best trial among the first b trials, for each b."
    rows = sorted((r for r in res['runs'] if r['status'] == 'FINISHED' and r.get('metric.score') is not None), key=lambda r: r['index'])
    out = []
    for b in budgets:
        best = max(rows[:b], key=lambda r: r['metric.score'])
        out.append(((best['x'] - 0.3) ** 2 + (best['y'] - 0.7) ** 2) ** 0.5)
    return out


def tuning(a):
    from nbformat.v4 import new_code_cell, new_notebook
    import nbformat
    root = Path(tempfile.mkdtemp(prefix='bench_tuning_'))
    mn = str(BIN / 'mlops-nb')
    d = root / 'p'
    uri = fresh_store(d)
    nb = new_notebook(cells=[new_code_cell(QPARAMS, metadata={'tags': ['parameters']}), new_code_cell(QUADRATIC)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, d / 'quad.ipynb')
    env = env_for(d, uri, d / 'quad.ipynb')
    run([mn, 'worker', 'start'], d, env)
    budgets = [b for b in (5, 10, 20, 30, 50) if b <= a.budget] or [a.budget]
    dist = {'tpe': [], 'random': []}
    for seed in range(a.seeds if a.part != 'prune' else 0):
        for search in dist:
            s, res = _tuning_sweep(mn, 'quad.ipynb', d, env, '--search', search, '--trials', str(a.budget), '--seed', str(seed), '--workers', str(a.workers))
            dist[search].append(_distance_by_budget(res, budgets))
            print(f"  {search} seed {seed}: {s:.1f}s, distance at {budgets[-1]} trials {dist[search][-1][-1]:.4f}", file=sys.stderr, flush=True)
    if a.part != 'prune':
        print(f"\ndistance of the best trial to the optimum (median over {a.seeds} seeds), {a.workers} trials in flight")
        print(f"{'trials':>7} {'tpe':>9} {'random':>9} {'random / tpe':>13}")
        for i, b in enumerate(budgets):
            t, r = (statistics.median(v[i] for v in dist[k]) for k in ('tpe', 'random'))
            print(f"{b:>7} {t:9.4f} {r:9.4f} {r / t if t else float('inf'):12.2f}x")
    if a.part == 'distance': return
    n = min(16, a.budget)
    walls = {}
    for rep in range(a.repeat):  # interleaved, so that a busy spell of a shared machine falls on both
        for name, extra in (('unpruned', ()), ('pruned (median)', ('--prune', 'median'))):
            s, res = _tuning_sweep(mn, 'quad.ipynb', d, env, '--search', 'tpe', '--trials', str(n), '--seed', '0', '--workers', str(a.workers),
                                   '-p', 'pause', '0.3', *extra)
            from mlflow import MlflowClient
            c = MlflowClient(uri)
            steps = sum(len(c.get_metric_history(r['run_id'], 'intermediate')) for r in res['runs'])
            walls.setdefault(name, []).append((s, steps, res['pruned'], res['finished']))
            print(f"  {name}: {s:.1f}s, {steps} steps", file=sys.stderr, flush=True)
    subprocess.run([mn, 'worker', 'stop', '--force'], cwd=d, env=env, capture_output=True)
    print(f"\nTPE sweep of {n} trials, 6 steps of 0.3 s each, {a.workers} at a time (median of {a.repeat})")
    print(f"{'variant':<18} {'wall s':>7} {'steps':>6} {'pruned':>7} {'finished':>9}")
    med = {k: [statistics.median(x[i] for x in v) for i in range(4)] for k, v in walls.items()}
    for k, (s, steps, p, f) in med.items(): print(f"{k:<18} {s:7.1f} {steps:6.0f} {p:7.0f} {f:9.0f}")
    print(f"ratio unpruned / pruned wall time: {med['unpruned'][0] / med['pruned (median)'][0]:.2f}x")


if __name__ == '__main__':
    main()
