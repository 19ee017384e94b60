"""Benchmark `mlops-nb serve` against `mlflow models serve` on the same model, same worker count.

The model is the quickstart's: a random forest pipeline (scikit-learn defaults, 100 trees) trained on
breast_cancer, registered as `bench@champion` in a fresh SQLite store in a temp dir. Both servers run
from that store with `--workers W` (default 1): MLflow's with `--env-manager local`.

Before timing, both servers answer the same 100 rows and the answers must be identical (else exit 1).
Load generator: wrk (Debian's `wrk`, 4.1), one POST body per cell (`dataframe_split`, 1 or 100 rows),
`-c C` connections for C in (1, 16), `-d S` seconds after a 2 s warm-up run, `--latency` for the
percentiles. Cells are measured one server at a time (the other idles).

Prints, per cell: requests/s, p50 and p99 for each server, the throughput ratio (ours / MLflow) and the
p99 ratio (MLflow / ours; above 1 means ours is lower), and any non-2xx answers.

With `--model xgboost` or `--model lightgbm` the model is a gradient-boosted classifier (100 trees, depth 4)
on breast_cancer logged by plain MLflow code (`mlflow.xgboost.log_model` / `mlflow.lightgbm.log_model`, no
mlops_nb), served by both through its own flavour; only one-row requests are timed.

MLServer is a second peer for the XGBoost and LightGBM models: `mlserver start` (1.7.1, MLflow runtime
`mlserver_mlflow.MLflowRuntime`, `parallel_workers` = W) on the same model folder, in its own virtual environment
(`bench/out/mlserver-venv`, created on first use with mlserver, mlserver-mlflow, the model's library and `uvloop<0.22`,
which MLServer 1.7 needs). It answers MLflow's `/invocations` protocol, so it gets the same bodies, and its answers
must equal MLflow's too. `--mlserver off` skips it; when its environment cannot be made, a line says so and the run
goes on without it.

With `--shadow` the peer is not MLflow: two `mlops-nb serve` of the same champion, one plain and one with
`--shadow models:/bench/2` (a second forest, seed 1) scoring every request off the response path; the
answers of both must be identical, and the ratio is shadow / plain (aim: at least 0.7x the throughput).

Usage: python bench/serve.py [--duration S] [--workers W] [--onnx auto|off] [--model forest|xgboost|lightgbm] [--mlserver auto|off] [--shadow]
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

LUA = '''wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BODY_FILE"), "rb"); wrk.body = f:read("*a"); f:close()
'''


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def wait_ready(url, proc, timeout=300):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if proc.poll() is not None: sys.exit(f'server exited: {proc.args}')
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200: return
        except OSError: pass
        time.sleep(0.5)
    sys.exit(f'not ready: {url}')


def post(url, body: bytes):
    req = urllib.request.Request(url, data=body, headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=60) as r: return json.loads(r.read())


def train(d: Path, seed: int = 0, alias: str | None = 'champion'):
    from mlops_nb.core import get_settings
    from mlops_nb.data import infer_schema, load_dataset, split
    from mlops_nb.registry import register_run_model
    from mlops_nb.tracking import log_model, record, start_run
    from mlops_nb.train import fit
    s = get_settings(cwd=d, env={})
    tr, te = split(load_dataset('breast_cancer'), test_size=0.2, seed=0, stratify='target')
    schema = infer_schema(tr, target='target')
    with start_run(settings=s, params=dict(dataset='breast_cancer', target='target', model='random_forest', test_size=0.2, seed=seed),
                   seed=seed, tags={'mlops_nb.job': 'train'}) as run:
        f = d / 'schema.json'; schema.save(f); record('schema.json', f)
        log_model(fit(tr, schema, 'random_forest', seed=seed), tr.drop(columns='target').head())
    register_run_model('bench', run.run_id, s, alias=alias)
    return te.drop(columns='target')


def train_boosted(d: Path, kind: str):
    "A boosted classifier logged and registered by plain MLflow code, as a team would: returns held-out features."
    import mlflow
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    mlflow.set_tracking_uri(f"sqlite:///{d / 'mlflow.db'}")
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    Xtr, Xte, ytr, _ = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    with mlflow.start_run() as run:
        if kind == 'xgboost':
            import xgboost
            m = xgboost.XGBClassifier(n_estimators=100, max_depth=4, random_state=0).fit(Xtr, ytr)
            mlflow.xgboost.log_model(m, name='model', input_example=Xtr.head(5), pip_requirements=['xgboost'])
        else:
            import lightgbm
            m = lightgbm.LGBMClassifier(n_estimators=100, max_depth=4, random_state=0, verbose=-1).fit(Xtr, ytr)
            mlflow.lightgbm.log_model(m, name='model', input_example=Xtr.head(5), pip_requirements=['lightgbm'])
    mv = mlflow.register_model(f'runs:/{run.info.run_id}/model', 'bench')
    mlflow.MlflowClient().set_registered_model_alias('bench', 'champion', mv.version)
    return Xte


MLSERVER_VENV = Path(__file__).resolve().parent / 'out' / 'mlserver-venv'
MLSERVER_PINS = ['mlserver==1.7.1', 'mlserver-mlflow==1.7.1', 'uvloop<0.22']  # MLServer 1.7's workers fail under uvloop 0.22+


def ensure_mlserver(kind: str) -> tuple[str | None, str]:
    "`(mlserver executable or None, why not)`: the MLServer environment, created on first use with the model's library."
    exe, py = MLSERVER_VENV / 'bin' / 'mlserver', MLSERVER_VENV / 'bin' / 'python'
    try:
        if not exe.exists():
            print(f"creating {MLSERVER_VENV} ({', '.join(MLSERVER_PINS)}; once, a few minutes) ...", flush=True)
            subprocess.run([sys.executable, '-m', 'venv', str(MLSERVER_VENV)], check=True)
            subprocess.run([str(py), '-m', 'pip', 'install', '-q', *MLSERVER_PINS], check=True)
        if subprocess.run([str(py), '-c', f'import {kind}'], capture_output=True).returncode:
            subprocess.run([str(py), '-m', 'pip', 'install', '-q', {'xgboost': 'xgboost-cpu', 'lightgbm': 'lightgbm'}[kind]], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return None, f'could not create {MLSERVER_VENV}: {e}'
    return str(exe), ''


def mlserver_cmd(exe: str, d: Path, port: int, workers: int) -> list:
    "MLServer's settings and model settings in `d/mlserver`, for the champion's files (downloaded here); its command."
    import mlflow
    model = Path(mlflow.artifacts.download_artifacts('models:/bench@champion', dst_path=str(d / 'mlserver-model')))
    ms = d / 'mlserver'; ms.mkdir()
    (ms / 'settings.json').write_text(json.dumps({'host': '127.0.0.1', 'http_port': port, 'grpc_port': free_port(),
                                                  'metrics_port': free_port(), 'parallel_workers': workers, 'debug': False}))
    (ms / 'model-settings.json').write_text(json.dumps({'name': 'bench', 'implementation': 'mlserver_mlflow.MLflowRuntime',
                                                        'parameters': {'uri': str(model)}}))
    return [exe, 'start', str(ms)]


def seconds(v: str) -> float:
    m = re.fullmatch(r'([\d.]+)(us|ms|s|m)', v)
    return float(m.group(1)) * {'us': 1e-6, 'ms': 1e-3, 's': 1.0, 'm': 60.0}[m.group(2)]


def wrk(url, body_file, conns, duration, lua):
    env = {**os.environ, 'BODY_FILE': str(body_file)}
    base = ['wrk', '-t', str(min(conns, 2)), '-c', str(conns), '-s', str(lua), '--latency', url]
    subprocess.run([*base[:1], '-d', '2s', *base[1:]], env=env, capture_output=True)  # warm-up
    out = subprocess.run([*base[:1], '-d', f'{duration}s', *base[1:]], env=env, capture_output=True, text=True).stdout
    rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
    pct = {p: seconds(v) for p, v in re.findall(r'^\s+(50|99)%\s+(\S+)', out, re.M)}
    bad = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    errs = re.search(r'Socket errors: .*', out)
    return dict(rps=rps, p50=pct['50'], p99=pct['99'], non2xx=int(bad.group(1)) if bad else 0, socket_errors=errs.group(0) if errs else '')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--duration', type=int, default=10, help='seconds per cell (default 10)')
    ap.add_argument('--workers', type=int, default=1, help='worker processes of each server (default 1)')
    ap.add_argument('--onnx', default='auto', choices=['auto', 'off'], help="mlops-nb serve's --onnx (off: batching alone, the model's own flavour predicts)")
    ap.add_argument('--model', default='forest', choices=['forest', 'xgboost', 'lightgbm'],
                    help='forest: the quickstart model (mlops_nb train run); xgboost/lightgbm: logged by plain MLflow code')
    ap.add_argument('--mlserver', default='auto', choices=['auto', 'off'],
                    help='auto: MLServer (MLflow runtime) as a second peer for xgboost/lightgbm, its venv made on first use; off: skip it')
    ap.add_argument('--shadow', action='store_true', help='compare mlops-nb serve with and without --shadow (same model) instead of against MLflow')
    a = ap.parse_args()
    if not shutil.which('wrk'): sys.exit('wrk is not installed (apt-get install wrk)')
    if a.shadow: return main_shadow(a)
    d = Path(tempfile.mkdtemp(prefix='bench_serve_'))
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'MLOPS_NB_'))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{d / 'mlflow.db'}", MLFLOW_DISABLE_TELEMETRY='true')
    os.environ.update(MLFLOW_DISABLE_TELEMETRY='true')
    X = train(d) if a.model == 'forest' else train_boosted(d, a.model)
    bodies = {}
    for n in (1, 100):
        rows = X.sample(n, replace=n > len(X), random_state=0)
        bodies[n] = d / f'body{n}.json'
        bodies[n].write_text(json.dumps({'dataframe_split': json.loads(rows.to_json(orient='split', index=False))}))
    lua = d / 'post.lua'; lua.write_text(LUA)
    ports = {'mlflow': free_port(), 'mlops_nb': free_port()}
    cmds = {'mlflow': [sys.executable, '-m', 'mlflow', 'models', 'serve', '-m', 'models:/bench@champion', '--env-manager', 'local',
                       '-h', '127.0.0.1', '-p', str(ports['mlflow']), '-w', str(a.workers)],
            'mlops_nb': [str(Path(sys.executable).parent / 'mlops-nb'), 'serve', 'models:/bench@champion', '--port', str(ports['mlops_nb']),
                         '--workers', str(a.workers), '--onnx', a.onnx]}
    skipped = 'MLServer: skipped (--mlserver off)' if a.mlserver == 'off' else \
              'MLServer: skipped (measured for the xgboost and lightgbm models only)' if a.model == 'forest' else None
    if skipped is None:
        exe, why = ensure_mlserver(a.model)
        if exe is None: skipped = f'MLServer: skipped ({why})'
        else:
            os.environ['MLFLOW_TRACKING_URI'] = env['MLFLOW_TRACKING_URI']
            ports['mlserver'] = free_port()
            cmds['mlserver'] = mlserver_cmd(exe, d, ports['mlserver'], a.workers)
    ready = {'mlflow': '/ping', 'mlops_nb': '/ping', 'mlserver': '/v2/health/ready'}
    procs = {k: subprocess.Popen(c, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=open(d / f'{k}.log', 'w'), start_new_session=True)
             for k, c in cmds.items()}
    try:
        for k, p in procs.items(): wait_ready(f'http://127.0.0.1:{ports[k]}{ready[k]}', p)
        time.sleep(2)  # our server answers /ping once loaded; let MLflow's workers settle too
        big = bodies[100].read_bytes()
        answers = {k: post(f'http://127.0.0.1:{ports[k]}/invocations', big) for k in ports}
        engine = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ports['mlops_nb']}/version").read())['engine']
        identical = all(answers[k] == answers['mlflow'] for k in ports)
        what = 'random forest (100 trees)' if a.model == 'forest' else f'{a.model} classifier (100 trees, depth 4, plain MLflow)'
        print(f"model: {what} on breast_cancer; workers: {a.workers} each; mlops_nb engine: {engine}")
        print(f"load generator: wrk 4.1 (Debian), {a.duration} s per cell after a 2 s warm-up; predictions identical on 100 rows "
              f"({', '.join(ports)}): {'yes' if identical else 'NO'}; load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print((skipped or f'MLServer 1.7.1 (MLflow runtime, parallel_workers {a.workers}): {cmds["mlserver"][0]}') + '\n')
        hdr = f"{'rows':>4} {'conc':>4} | {'mlflow req/s':>12} {'p50 ms':>8} {'p99 ms':>8} | {'mlops_nb req/s':>14} {'p50 ms':>8} {'p99 ms':>8} | {'throughput x':>12} {'p99 x':>7}"
        print(hdr); print('-' * len(hdr))
        for n in ((1, 100) if a.model == 'forest' else (1,)):
            for c in (1, 16):
                r = {k: wrk(f'http://127.0.0.1:{ports[k]}/invocations', bodies[n], c, a.duration, lua) for k in ports}
                m, o = r['mlflow'], r['mlops_nb']
                print(f"{n:>4} {c:>4} | {m['rps']:>12.1f} {m['p50'] * 1e3:>8.1f} {m['p99'] * 1e3:>8.1f} | {o['rps']:>14.1f} "
                      f"{o['p50'] * 1e3:>8.1f} {o['p99'] * 1e3:>8.1f} | {o['rps'] / m['rps']:>12.1f} {m['p99'] / o['p99']:>7.1f}"
                      + ''.join(f"  [{k}: {v['non2xx']} non-2xx {v['socket_errors']}]" for k, v in r.items() if v['non2xx'] or v['socket_errors']),
                      flush=True)
                if 'mlserver' in r:
                    s_ = r['mlserver']
                    print(f"{'':>4} {'':>4} | mlserver: {s_['rps']:.1f} req/s, p50 {s_['p50'] * 1e3:.1f} ms, p99 {s_['p99'] * 1e3:.1f} ms"
                          f" | ours / mlserver: throughput {o['rps'] / s_['rps']:.1f}x, p99 {s_['p99'] / o['p99']:.1f}x", flush=True)
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        return 0 if identical else 1
    finally:
        for p in procs.values():
            try: os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError: pass
        for p in procs.values():
            try: p.wait(30)
            except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)


def main_shadow(a):
    "Throughput and p99 of one server with `--shadow` against the same server without, concurrency 1 and 16."
    d = Path(tempfile.mkdtemp(prefix='bench_shadow_'))
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'MLOPS_NB_'))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{d / 'mlflow.db'}", MLFLOW_DISABLE_TELEMETRY='true')
    os.environ.update(MLFLOW_DISABLE_TELEMETRY='true')
    X = train(d)
    train(d, seed=1, alias=None)  # version 2: the shadow
    bodies = {}
    for n in (1, 100):
        bodies[n] = d / f'body{n}.json'
        bodies[n].write_text(json.dumps({'dataframe_split': json.loads(X.sample(n, random_state=0).to_json(orient='split', index=False))}))
    lua = d / 'post.lua'; lua.write_text(LUA)
    exe = str(Path(sys.executable).parent / 'mlops-nb')
    ports = {'plain': free_port(), 'shadow': free_port()}
    common = ['serve', 'models:/bench@champion', '--workers', str(a.workers), '--onnx', a.onnx]
    cmds = {'plain': [exe, *common, '--port', str(ports['plain']), '--log-dir', str(d / 'log-plain')],
            'shadow': [exe, *common, '--port', str(ports['shadow']), '--log-dir', str(d / 'log-shadow'), '--shadow', 'models:/bench/2']}
    procs = {k: subprocess.Popen(c, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=open(d / f'{k}.log', 'w'), start_new_session=True)
             for k, c in cmds.items()}
    try:
        for k, p in procs.items(): wait_ready(f'http://127.0.0.1:{ports[k]}/ping', p)
        big = bodies[100].read_bytes()
        answers = {k: post(f'http://127.0.0.1:{ports[k]}/invocations', big) for k in ports}
        identical = answers['plain'] == answers['shadow']
        print(f"model: random forest (100 trees) on breast_cancer, shadow: a second forest (seed 1); workers: {a.workers} each; request log on")
        print(f"load generator: wrk 4.1 (Debian), {a.duration} s per cell after a 2 s warm-up; answers identical on 100 rows: "
              f"{'yes' if identical else 'NO'}\n")
        hdr = f"{'rows':>4} {'conc':>4} | {'plain req/s':>11} {'p50 ms':>8} {'p99 ms':>8} | {'shadow req/s':>12} {'p50 ms':>8} {'p99 ms':>8} | {'throughput x':>12} {'p99 x':>7}"
        print(hdr); print('-' * len(hdr))
        for n in (1, 100):
            for c in (1, 16):
                r = {k: wrk(f'http://127.0.0.1:{ports[k]}/invocations', bodies[n], c, a.duration, lua) for k in ports}
                m, o = r['plain'], r['shadow']
                print(f"{n:>4} {c:>4} | {m['rps']:>11.1f} {m['p50'] * 1e3:>8.1f} {m['p99'] * 1e3:>8.1f} | {o['rps']:>12.1f} "
                      f"{o['p50'] * 1e3:>8.1f} {o['p99'] * 1e3:>8.1f} | {o['rps'] / m['rps']:>12.2f} {m['p99'] / o['p99']:>7.2f}"
                      + ''.join(f"  [{k}: {v['non2xx']} non-2xx {v['socket_errors']}]" for k, v in r.items() if v['non2xx'] or v['socket_errors']),
                      flush=True)
        m = urllib.request.urlopen(f"http://127.0.0.1:{ports['shadow']}/metrics").read().decode()
        print('\nshadow server: ' + '; '.join(l for l in m.splitlines() if l.startswith(('mlops_nb_shadow_requests_total', 'mlops_nb_shadow_agreement '))))
        return 0 if identical else 1
    finally:
        for p in procs.values():
            try: os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError: pass
        for p in procs.values():
            try: p.wait(30)
            except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
