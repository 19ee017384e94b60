"""Sweeps: `mlops-nb sweep` against what users do by hand, in the same run.

Two notebooks (see bench/jobs.py): the *trivial* one (one cell computing and recording a number), swept over 8 and
16 values, and the *short* one (a logistic regression on iris), a 16-job grid of `C` (4 values) by `seed` (4 values).
For each:
- `mlops-nb sweep NB --grid ... --workers 2`: parent + child runs, summary, best run; with a cold worker (the
  command starts the project's warm worker) and a warm one (already running);
- (a) a sequential loop of `papermill` calls: untracked for the trivial notebook, logging to MLflow by hand for the short one;
- (b) the same papermill calls in a 2-process pool.

Usage: python bench/sweep.py [--repeat 1] [--workers 2] [--only trivial|short]   (prints a table and the ratios)
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
    a = ap.parse_args()
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


if __name__ == '__main__':
    main()
