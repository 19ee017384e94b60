"""Batch scoring, cold: `mlflow models predict` against `mlops-nb predict`, same model, same rows (300k and 5M).

Every `mlops-nb` row is cold unless it says warm: no warm worker running before the command (it is
stopped first), so the worker's start, the command, the job and its scoring processes are all timed.
"first load" also empties the compiled-model cache first (`MLOPS_NB_CACHE`), so the model is loaded
with scikit-learn, compiled to ONNX and verified in that run; the later rows load the compiled form
(what every run after a model's first does, on this machine). `mlflow models predict` reads CSV or JSON
only: it gets the CSV written from the same frame as the Parquet file `mlops-nb` reads.

Memory: every 50 ms, the PSS of every process that carries this run's marker in its environment (the
command, anything it starts: the warm worker and what it forks, the forkserver, the job, the scoring
processes; MLflow's process) is read from /proc/PID/smaps_rollup and summed; the peak of that sum is
shown (BENCH_BATCH_BREAKDOWN=1 also prints each process's PSS at that peak). Inputs go to bench/out/batch/ (the 5M-row files are large, and bench/out/ is not in the repo).

    python bench/batch.py [--rows 300000 5000000] [--model logistic] [--repeat 1]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tests'))
from batch_helpers import make_rows, train_and_register  # noqa: E402


class TreePss(threading.Thread):
    "Samples, every `interval` s, the summed PSS (bytes) of the processes whose environment holds `MARK=tag`."
    def __init__(self, tag: str, interval: float = 0.05):
        super().__init__(daemon=True)
        self.needle, self.interval, self.peak, self.peak_procs = f'BENCH_BATCH_MARK={tag}'.encode(), interval, 0, 0  # a prefix
        self.at_peak: list = []  # (MB, pid, name) of each process at the peak, largest first
        self.seen: dict = {}  # pid -> (start time, ours?)
        self.stop = threading.Event()

    def _ours(self, pid: str) -> bool:
        try:
            start = open(f'/proc/{pid}/stat', 'rb').read().rsplit(b')', 1)[1].split()[19]
            if pid in self.seen and self.seen[pid][0] == start: return self.seen[pid][1]
            ours = any(v.startswith(self.needle) for v in open(f'/proc/{pid}/environ', 'rb').read().split(b'\0'))
        except OSError: return False
        self.seen[pid] = (start, ours)
        return ours

    def sample(self) -> tuple[int, list]:
        total, procs = 0, []
        for pid in os.listdir('/proc'):
            if not pid.isdigit() or not self._ours(pid): continue
            try:
                for line in open(f'/proc/{pid}/smaps_rollup', 'rb'):
                    if line.startswith(b'Pss:'):
                        b = int(line.split()[1]) * 1024; total += b
                        procs.append((b / 2**20, int(pid), open(f'/proc/{pid}/comm').read().strip())); break
            except OSError: pass
        return total, procs

    def run(self):
        while not self.stop.is_set():
            total, procs = self.sample()
            if total > self.peak: self.peak, self.peak_procs, self.at_peak = total, len(procs), sorted(procs, reverse=True)
            time.sleep(self.interval)


def measure(cmd, cwd, env, tag) -> tuple[float, float, int, int]:
    """(seconds, peak MB of summed PSS, processes at the peak, exit code) of `cmd`: the processes marked with this run's tag (a warm
    worker started by an earlier row of this run included)."""
    sampler = TreePss(tag.split('.')[0])
    sampler.start()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env={**env, 'BENCH_BATCH_MARK': tag}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    sampler.stop.set(); sampler.join()
    if os.environ.get('BENCH_BATCH_BREAKDOWN'):  # which process held what at the peak
        print('      at the peak: ' + ', '.join(f'{name} {mb:.0f}' for mb, pid, name in sampler.at_peak), flush=True)
    if p.returncode: print(f"  {' '.join(cmd[:3])} exited {p.returncode}: {p.stderr[-1500:]}", file=sys.stderr)
    return dt, sampler.peak / 2**20, sampler.peak_procs, p.returncode


def load_average() -> str: return ' '.join(open('/proc/loadavg').read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rows', type=int, nargs='+', default=[300_000, 5_000_000])
    ap.add_argument('--model', default='logistic', help='model factory of the scored model (default logistic)')
    ap.add_argument('--repeat', type=int, default=1, help='runs of each row (the median is shown)')
    ap.add_argument('--only', nargs='+', default=[], metavar='TEXT', help='only the mlops-nb rows whose name holds one of these (mlflow always runs)')
    a = ap.parse_args()
    d = ROOT / 'bench' / 'out' / 'batch'
    shutil.rmtree(d, ignore_errors=True); d.mkdir(parents=True)
    cache = d / 'cache'
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'MLOPS_NB_'))}
    env.update(MLFLOW_DISABLE_TELEMETRY='true', MLFLOW_TRACKING_URI=f"sqlite:///{d / 'mlflow.db'}", MLOPS_NB_CACHE=str(cache))
    print(f"training and registering a {a.model} model in {d} ...", flush=True)
    os.environ.update(MLFLOW_TRACKING_URI=env['MLFLOW_TRACKING_URI'])
    train_and_register(d, model=a.model)
    exe = str(Path(sys.executable).parent / 'mlops-nb')
    uri = 'models:/batchdemo@champion'
    def stop():  # and wait until it has exited: a worker still importing when told to stop would be counted in the next row
        import json as _json
        r = subprocess.run([exe, 'worker', 'stop', '--force', '--json'], cwd=d, env=env, capture_output=True, text=True)
        pid = (_json.loads(r.stdout or '{}') or {}).get('pid')
        deadline = time.time() + 120
        while pid and os.path.exists(f'/proc/{pid}') and time.time() < deadline: time.sleep(0.05)
    clear = lambda: shutil.rmtree(cache, ignore_errors=True)
    table, run_tag = [], uuid.uuid4().hex
    for n in a.rows:
        df = make_rows(n)
        df.to_parquet(d / f'in_{n}.parquet', row_group_size=100_000)
        df.to_csv(d / f'in_{n}.csv', index=False)
        del df
        ours = lambda out, *extra: [exe, 'predict', uri, f'in_{n}.parquet', '--out', out, '--keep', 'id', '--overwrite', *extra]
        runs = {  # name -> (what to do first, command)
            'mlflow models predict (CSV)': (stop, [sys.executable, '-m', 'mlflow', 'models', 'predict', '-m', uri, '-i', f'in_{n}.csv',
                                                   '-t', 'csv', '-o', f'mlflow_{n}.json', '--env-manager', 'local']),
            'mlops-nb predict, cold, first load (compiles)': (lambda: (stop(), clear()), ours(f'ours_{n}.parquet')),
            'mlops-nb predict, cold': (stop, ours(f'ours_{n}.parquet')),
            'mlops-nb predict --no-worker, cold': (stop, ours(f'ours_{n}.parquet', '--no-worker')),
            'mlops-nb predict --onnx off, cold': (stop, ours(f'ours_{n}.parquet', '--onnx', 'off')),
            'mlops-nb predict, warm worker': (None, ours(f'ours_{n}.parquet')),
        }
        runs = {k: v for k, v in runs.items() if k.startswith('mlflow') or not a.only or any(o in k for o in a.only)}
        res = {}
        for name, (before, cmd) in runs.items():
            got = []
            for _ in range(a.repeat):
                if before: before()
                print(f"{n:>9,} rows  {name} (load {load_average()}) ...", flush=True)
                got.append((*measure(cmd, d, env, f'{run_tag}.{uuid.uuid4().hex}'), load_average()))
            med = statistics.median(g[0] for g in got)
            res[name] = next(g for g in got if g[0] == med)
            t, m, procs, rc, la = res[name]; base = res['mlflow models predict (CSV)']
            print(f"    {t:.1f} s, peak {m:.0f} MB over {procs} processes; {base[0] / t:.2f}x mlflow's speed, {m / base[1]:.2f}x its memory", flush=True)
        stop()
        base = res['mlflow models predict (CSV)']
        for name, (t, m, procs, rc, la) in res.items():
            table.append((n, name, t, m, procs, base[0] / t, m / base[1], rc, la))
        import json
        import pandas as pd
        theirs = json.loads((d / f'mlflow_{n}.json').read_text())['predictions']
        mine = pd.read_parquet(d / f'ours_{n}.parquet')['prediction'].tolist()
        print(f"  same predictions as mlflow models predict on all {n:,} rows: {theirs == mine}", flush=True)
        for f in d.glob(f'*_{n}.*'): f.unlink(missing_ok=True)
    print(f"\n{'rows':>10}  {'tool':<46} {'seconds':>8} {'peak MB':>8} {'procs':>5} {'speed-up':>9} {'memory':>7}  load avg")
    for n, name, t, m, procs, sp, mr, rc, la in table:
        print(f"{n:>10,}  {name:<46} {t:8.1f} {m:8.0f} {procs:5d} {sp:8.2f}x {mr:6.2f}x  {la}" + ('' if rc == 0 else f'  (exit {rc})'))
    print("\npeak MB: the peak of the summed PSS of every process the command started (the worker and its forks included),"
          "\nsampled every 50 ms; procs: processes counted at that peak. speed-up: mlflow's seconds / these seconds;"
          "\nmemory: this peak / mlflow's peak (lower is better).")


if __name__ == '__main__':
    main()
