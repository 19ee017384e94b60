"""Helpers for the serving tests: a trained, registered model in a scratch store, and real server processes."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import clean_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def train_and_register(d: Path, name: str, n_estimators: int, seed: int = 0, alias: str | None = 'champion') -> tuple[str, str]:
    "A train-like run (params, schema.json, model) in the store of `d`, registered as a version of `name`: (run_id, version)."
    from mlops_nb.core import get_settings
    from mlops_nb.data import infer_schema, load_dataset, split
    from mlops_nb.registry import register_run_model
    from mlops_nb.tracking import log_model, record, start_run
    from mlops_nb.train import fit
    s = get_settings(cwd=d, env={})
    p = dict(dataset='breast_cancer', target='target', model='random_forest', n_estimators=n_estimators, test_size=0.2, seed=seed)
    tr, _ = split(load_dataset('breast_cancer'), test_size=0.2, seed=seed, stratify='target')
    schema = infer_schema(tr, target='target')
    with start_run(settings=s, params=p, seed=seed, tags={'mlops_nb.job': 'train'}) as run:
        f = Path(tempfile.mkdtemp()) / 'schema.json'
        schema.save(f); record('schema.json', f)
        log_model(fit(tr, schema, 'random_forest', seed=seed, n_estimators=n_estimators), tr.drop(columns='target').head())
    return run.run_id, str(register_run_model(name, run.run_id, s, alias=alias).version)


def set_alias(d: Path, name: str, alias: str, version: str):
    from mlops_nb.core import get_settings
    from mlops_nb.tracking import client
    client(get_settings(cwd=d, env={})).set_registered_model_alias(name, alias, version)


def store_env(d: Path, **extra) -> dict:
    "The environment of a process using the store of `d` (`extra` overrides)."
    return {**clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{d / 'mlflow.db'}", MLFLOW_DISABLE_TELEMETRY='true'), **extra}


def http(method: str, url: str, body: bytes | None = None, ctype: str = 'application/json', headers: dict | None = None, timeout=60):
    "(status, headers, body bytes) of one request; never raises on HTTP errors."
    req = urllib.request.Request(url, data=body, method=method, headers={'Content-Type': ctype, **(headers or {})} if body is not None else headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e: return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def post_json(base: str, doc, **kw):
    st, h, b = http('POST', f'{base}/invocations', json.dumps(doc).encode() if not isinstance(doc, bytes) else doc, **kw)
    try: return st, h, json.loads(b)
    except ValueError: return st, h, b


class Proc:
    "A server process on a free port, waited for until `ready_path` answers 200."
    def __init__(self, args: list, cwd: Path, env: dict, ready_path='/health', timeout=180):
        self.port = free_port()
        self.base = f'http://127.0.0.1:{self.port}'
        self.log = open(Path(cwd) / f'server-{self.port}.log', 'w+')
        args = [a.replace('{port}', str(self.port)) for a in map(str, args)]
        self.p = subprocess.Popen(args, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.p.poll() is not None: raise RuntimeError(f'server exited {self.p.returncode}:\n{self.output()}')
            try:
                if http('GET', self.base + ready_path, timeout=2)[0] == 200: break
            except OSError: pass
            if time.monotonic() > deadline: self.stop(); raise RuntimeError(f'server not ready in {timeout} s:\n{self.output()}')
            time.sleep(0.3)

    def output(self) -> str:
        self.log.flush(); self.log.seek(0); return self.log.read()

    def terminate(self, timeout=60) -> int:
        "SIGTERM the server (the process we started) and wait for it."
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try: self.p.wait(timeout)
            except subprocess.TimeoutExpired: os.killpg(self.p.pid, signal.SIGKILL); self.p.wait()
        return self.p.returncode

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try: self.p.wait(30)
            except subprocess.TimeoutExpired: os.killpg(self.p.pid, signal.SIGKILL); self.p.wait()


def mlops_nb_exe() -> str: return str(Path(sys.executable).parent / 'mlops-nb')
