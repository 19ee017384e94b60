"""A 16-job sweep of a short training notebook: `mlops-nb sweep` against what users do by hand, in the same run.

- `mlops-nb sweep short.ipynb --grid C=... --grid seed=...`  (parent + child runs, summary, best run; local executor,
                                                              --workers 2 on this 2-core machine)
- (a) a sequential loop of `papermill` calls, the notebook logging to MLflow by hand
- (b) the same papermill calls in a 2-process pool (concurrent.futures), logging by hand

Usage: python bench/sweep.py [--repeat 1] [--workers 2]    (prints a table and the ratios; a few minutes)
Each variant writes to its own fresh SQLite store created before timing starts; after timing, every variant's
store is checked to hold 16 FINISHED runs with an `accuracy` metric.
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
from jobs import BIN, BY_HAND, TRACKED, env_for, fresh_store, notebook  # noqa: E402

GRID = {'C': ['0.01', '0.1', '1', '10'], 'seed': ['0', '1', '2', '3']}


def papermill_cmd(nb, out, combo):
    return [str(BIN / 'papermill'), str(nb), str(out), '--no-progress-bar', *itertools.chain(*(('-p', k, v) for k, v in combo.items()))]


def run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def finished_runs(uri) -> int:
    from mlflow import MlflowClient
    c = MlflowClient(uri)
    runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id], max_results=1000)]
    return sum(r.info.status == 'FINISHED' and 'accuracy' in r.data.metrics for r in runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeat', type=int, default=1)
    ap.add_argument('--workers', type=int, default=2)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix='bench_sweep_'))
    tracked, by_hand = notebook(root / 'short.ipynb', TRACKED), notebook(root / 'by_hand.ipynb', BY_HAND)
    combos = [dict(zip(GRID, v)) for v in itertools.product(*GRID.values())]
    grid = list(itertools.chain(*(('--grid', f"{k}={','.join(v)}") for k, v in GRID.items())))

    def sweep(d, env): run([str(BIN / 'mlops-nb'), 'sweep', str(tracked), *grid, '--workers', str(a.workers), '--metric', 'accuracy', '--json'], d, env)
    def loop(d, env):
        for i, c in enumerate(combos): run(papermill_cmd(by_hand, d / f'out{i}.ipynb', c), d, env)
    def pool(d, env):
        with cf.ThreadPoolExecutor(a.workers) as ex:  # threads only wait: each papermill call is its own process
            list(ex.map(lambda ic: run(papermill_cmd(by_hand, d / f'out{ic[0]}.ipynb', ic[1]), d, env), enumerate(combos)))
    variants = {f'mlops-nb sweep (16 jobs, --workers {a.workers})': sweep,
                '(a) papermill loop + MLflow by hand': loop,
                f'(b) papermill {a.workers}-process pool + MLflow by hand': pool}
    times, checks = {}, {}
    for rep in range(a.repeat):
        for i, (name, fn) in enumerate(variants.items()):
            d = root / f'{rep}-{i}'
            uri = fresh_store(d)
            t = time.perf_counter(); fn(d, env_for(d, uri, by_hand)); times.setdefault(name, []).append(time.perf_counter() - t)
            checks[name] = finished_runs(uri)
            print(f"  {name}: {times[name][-1]:.1f}s, {checks[name]} finished runs with accuracy", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'variant':<50} {'median s':>9} {'runs ok':>8}")
    for k, v in med.items(): print(f"{k:<50} {v:9.1f} {checks[k]:>8}")
    names = list(med)
    print('\nratios (higher = mlops-nb sweep faster):')
    print(f"  (a) sequential papermill / sweep: {med[names[1]] / med[names[0]]:.2f}x")
    print(f"  (b) papermill pool / sweep:       {med[names[2]] / med[names[0]]:.2f}x")


if __name__ == '__main__':
    main()
