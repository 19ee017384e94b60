"""Trust, from outside: secrets leak nowhere, no run is left RUNNING, every failure is marked, reproduce tells the truth.

Every test drives the real `mlops-nb` command on a real SQLite store in a scratch directory."""
import hashlib
import html
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import clean_env, mlops_nb, wait_for

PY3 = {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}}


def write_nb(path: Path, *cells, params: str | None = None) -> Path:
    "A job notebook: an optional `parameters` cell, then code cells."
    cs = ([new_code_cell(params, metadata={'tags': ['parameters']})] if params is not None else []) + [new_code_cell(c) for c in cells]
    nbformat.write(new_notebook(cells=cs, metadata=PY3), str(path))
    return path


def store_dump(workdir: Path) -> str:
    "Every row of the SQLite store as SQL text."
    con = sqlite3.connect(workdir / 'mlflow.db')
    try: return '\n'.join(con.iterdump())
    finally: con.close()


def files_text(workdir: Path) -> dict[Path, str]:
    "Every file the job left (artifacts, outputs, logs), but the store itself and the input notebook."
    return {p: p.read_text(encoding='utf-8', errors='replace') for p in workdir.rglob('*')
            if p.is_file() and p.name != 'mlflow.db' and p.parent != workdir}


def leaked_forms(value) -> set[str]:
    "The texts a secret value must never appear as: raw, JSON-escaped, HTML-escaped, repr; each long line of a multi-line one."
    if value is None or isinstance(value, bool): return set()
    if isinstance(value, list): return set().union(*(leaked_forms(v) for v in value))
    s = str(value)
    forms = {s, json.dumps(s)[1:-1], json.dumps(s, ensure_ascii=False)[1:-1], html.escape(s), html.escape(s, quote=False), repr(s)[1:-1]}
    lines = [l for l in s.splitlines() if len(l) >= 8]
    if len(lines) > 1: forms |= {l for l in lines if not l.startswith('-----')}  # the key's body, not its armour lines
    return forms


# One job per shape exercises every sink at once: stdout/stderr streams, repr, JSON, an HTML display, the result
# of a cell, `record` of the value and of a dict holding it, an error that quotes it, and --log-output's echo.
SHAPES = {
    'pem': ('api_token: str = ""', 'api_token',
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END PRIVATE KEY-----"),
    'quotes': (None, 'api_token', 'p"a\\s\'s\u00e9<&>w0rd'),  # no parameters cell: --allow-no-parameters, names still count
    'short': ('api_token: str = ""', 'api_token', 'Zq~'),
    'int': ('db_password: int = 0', 'db_password', 90817263),
    'list': ('from mlops_nb import Secret\napi_keys: list[Secret] = []', 'api_keys', ['k-1a2b3c4d5e', 'k-9z8y7x6w5v']),
    'none': ('api_token: str | None = "dflt-x"', 'api_token', None),
}


@pytest.mark.parametrize('shape', list(SHAPES))
def test_secret_leaks_nowhere(workdir, shape):
    params, name, value = SHAPES[shape]
    expect = hashlib.sha256(json.dumps(value).encode()).hexdigest()
    nb = write_nb(workdir / 'leak.ipynb',
                  f'import hashlib, html, json, sys\nfrom IPython.display import HTML, display\nfrom mlops_nb import record\nv = {name}',
                  'assert hashlib.sha256(json.dumps(v).encode()).hexdigest() == expect, "the job got another value or type"\n'
                  'print(v); print(repr(v), json.dumps(v), str(v)); print("stderr:", v, file=sys.stderr); print("None stays None")',
                  'display(HTML("<b>" + html.escape(str(v)) + "</b>"))\nrecord("token_used", v)\nrecord("cfg", {"tok": v})\nv',
                  'raise ValueError(f"bad token {v} / {json.dumps(v)}")',
                  params=None if params is None else params + '\nexpect: str = ""')
    text = value if isinstance(value, str) else json.dumps(value) if value is not None else 'none'
    extra = ['--allow-no-parameters'] if params is None else []
    r = mlops_nb('run', nb, '-p', name, text, '-p', 'expect', expect, '--log-output', *extra, cwd=workdir)
    assert r.returncode == 1, r.stderr  # the last cell raises: the job ran, and failed where it should
    assert 'ValueError: bad token' in r.stdout + r.stderr and 'another value' not in r.stdout + r.stderr
    assert 'None stays None' in r.stdout  # redaction is of values, not of every "None" in the output
    sinks = {'stdout': r.stdout, 'stderr': r.stderr, 'store': store_dump(workdir), **{str(p): t for p, t in files_text(workdir).items()}}
    notebooks = [p for p in workdir.rglob('*.ipynb') if p != nb]
    assert len(notebooks) >= 2 and any(p.suffix == '.html' for p in workdir.rglob('*.html'))  # the output and its artifact copy
    for p in notebooks: nbformat.validate(nbformat.read(str(p), as_version=4))
    for form in leaked_forms(value):
        where = [k for k, t in sinks.items() if form in t]
        assert not where, f"{shape}: {form!r} leaked into {where}"


def test_sweep_over_a_secret_is_refused(workdir):
    nb = write_nb(workdir / 'sw.ipynb', 'print(api_token)', params='api_token: str = ""\nn: int = 1')
    r = mlops_nb('sweep', nb, '--grid', 'api_token=Tk-aa11bb,Tk-cc22dd', '--grid', 'n=1,2', cwd=workdir)
    assert r.returncode == 2 and 'secret' in r.stderr and 'api_token' in r.stderr, r.stderr
    assert 'Tk-aa11bb' not in r.stdout + r.stderr and not (workdir / 'mlflow.db').exists()  # nothing started


# --- no run left RUNNING ---------------------------------------------------------------------------------------

def _runs(workdir):
    from mlflow import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exps = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(exps) if exps else []


def _slow_job(workdir: Path) -> Path:
    "A job whose second cell writes its pid to `started` and then waits (a long training step)."
    return write_nb(workdir / 'slow.ipynb', 'print("first cell")',
                    'import os, time\nopen("started", "w").write(str(os.getpid()))\nfor _ in range(1200): time.sleep(0.1)',
                    'print("never reached")', params='n: int = 0')


def _start(workdir, nb):
    exe = Path(sys.executable).parent / 'mlops-nb'
    p = subprocess.Popen([str(exe), 'run', str(nb)], cwd=workdir, env=clean_env(MLFLOW_DISABLE_TELEMETRY='true'),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: (workdir / 'started').exists() and (workdir / 'started').read_text() or p.poll() is not None, 'the job to start')
    assert p.poll() is None, p.communicate()
    return p, int((workdir / 'started').read_text())


def test_killed_driver_ends_run_driver_lost(workdir):
    p, job_pid = _start(workdir, _slow_job(workdir))
    p.send_signal(signal.SIGKILL); p.wait()
    run = wait_for(lambda: next((r for r in _runs(workdir) if r.info.status != 'RUNNING'), None), 'the run to end')
    assert run.info.status == 'FAILED' and run.data.tags['mlops_nb.failure_reason'] == 'driver_lost'
    assert run.data.tags['mlops_nb.pid'] == str(job_pid)
    art = next(workdir.glob(f"mlartifacts/*/{run.info.run_id}/artifacts/notebook/slow.ipynb"))
    nb = nbformat.read(str(art), as_version=4)
    status = [c.metadata.get('papermill', {}).get('status') for c in nb.cells if c.cell_type == 'code']
    assert status == ['completed', 'completed', 'failed', 'pending'] and nb.metadata.papermill.exception  # partial, marked
    wait_for(lambda: not Path(f'/proc/{job_pid}').exists() or 'Z' in Path(f'/proc/{job_pid}/stat').read_text().split(')')[1][:3],
             'the job process to exit')


def test_run_of_dead_processes_is_marked_lost_once(workdir):
    p, job_pid = _start(workdir, _slow_job(workdir))
    p.send_signal(signal.SIGKILL); os.kill(job_pid, signal.SIGKILL)  # both at once: nothing is left to end the run
    p.wait()
    wait_for(lambda: not Path(f'/proc/{job_pid}').exists() or 'Z' in Path(f'/proc/{job_pid}/stat').read_text().split(')')[1][:3],
             'the job process to die')
    (run,) = _runs(workdir)
    assert run.info.status == 'RUNNING'
    first, second = (mlops_nb('models', '--json', cwd=workdir) for _ in range(2))
    assert f"marked run {run.info.run_id} FAILED (lost)" in first.stderr, first.stderr
    assert 'lost' not in second.stderr  # said once
    (run,) = _runs(workdir)
    assert run.info.status == 'FAILED' and run.data.tags['mlops_nb.failure_reason'] == 'lost'


# --- failures marked the same on both engines --------------------------------------------------------------------

def test_papermill_engine_kernel_death_is_marked(workdir):
    nb = write_nb(workdir / 'die.ipynb', 'import os\nos._exit(3)', 'print("never")', params='n: int = 0')
    r = mlops_nb('run', nb, '--engine', 'papermill', '--json', cwd=workdir)
    assert r.returncode == 1, r.stderr
    res = json.loads(r.stdout)
    assert res['error']['reason'] == 'kernel_died' and res['error']['cell'] == 1  # after the parameters cell
    out = nbformat.read(res['output'], as_version=4)
    assert 'papermill-error-cell-tag' in out.cells[0].metadata.get('tags', [])  # papermill's banner
    status = [c.metadata.papermill.get('status') for c in out.cells if c.cell_type == 'code']
    assert status == ['completed', 'failed', 'pending'] and out.metadata.papermill.exception is True


# --- reproduce tells the truth -------------------------------------------------------------------------------------

READER = ('import pandas as pd\nfrom mlops_nb import record\ndf = pd.read_csv("data/points.csv")\n'
          'record("total", float(df["y"].sum()))')


def _first_run_id(workdir):
    (run,) = [r for r in _runs(workdir) if 'mlops_nb.reproduction_of' not in r.data.tags]
    return run.info.run_id


def test_reproduce_refuses_when_a_file_read_changed(workdir):
    (workdir / 'data').mkdir()
    (workdir / 'data' / 'points.csv').write_text('x,y\n1,2\n2,3\n')
    nb = write_nb(workdir / 'reader.ipynb', READER, params='n: int = 0')
    assert mlops_nb('run', nb, cwd=workdir).returncode == 0
    rid = _first_run_id(workdir)
    (workdir / 'data' / 'points.csv').write_text('x,y\n1,2\n2,4\n')  # rewritten; log_dataset never saw it
    r = mlops_nb('reproduce', rid, cwd=workdir)
    assert r.returncode == 2 and 'data/points.csv' in r.stderr and 'changed' in r.stderr, r.stdout + r.stderr
    assert 'identical' not in r.stdout


def test_papermill_engine_records_what_the_kernel_read(workdir):
    (workdir / 'data').mkdir()
    (workdir / 'data' / 'points.csv').write_text('x,y\n1,2\n2,3\n')
    nb = write_nb(workdir / 'reader.ipynb', READER, params='n: int = 0')
    assert mlops_nb('run', nb, '--engine', 'papermill', cwd=workdir).returncode == 0
    rid = _first_run_id(workdir)
    r = mlops_nb('reproduce', rid, '--engine', 'papermill', cwd=workdir)
    assert r.returncode == 0 and 'identical: same data (1 file checked), same metrics' in r.stdout, r.stdout + r.stderr
    (workdir / 'data' / 'points.csv').write_text('x,y\n1,2\n2,4\n')
    r = mlops_nb('reproduce', rid, cwd=workdir)
    assert r.returncode == 2 and 'data/points.csv' in r.stderr and 'changed' in r.stderr, r.stdout + r.stderr


def test_reproduce_from_another_directory_finds_the_files(workdir, tmp_path):
    (workdir / 'data').mkdir()
    (workdir / 'data' / 'points.csv').write_text('x,y\n1,2\n2,3\n')
    nb = write_nb(workdir / 'reader.ipynb', READER, params='n: int = 0')
    assert mlops_nb('run', nb, cwd=workdir).returncode == 0
    rid = _first_run_id(workdir)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    r = mlops_nb('reproduce', rid, '--tracking-uri', f"sqlite:///{workdir / 'mlflow.db'}", cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'identical: same data (1 file checked), same metrics' in r.stdout


# --- parameters, registry, house -------------------------------------------------------------------------------------

def test_malformed_dict_parameter_is_refused(workdir):
    nb = write_nb(workdir / 'cfg.ipynb', 'print(cfg)', params='cfg: dict = {}\nsteps: list[dict] = []')
    r = mlops_nb('run', nb, '-p', 'cfg', '{"a": ', cwd=workdir)
    assert r.returncode == 2 and "'cfg'" in r.stderr and 'not valid JSON or YAML' in r.stderr, r.stderr
    r = mlops_nb('run', nb, '-p', 'steps', '[1, 2]', cwd=workdir)
    assert r.returncode == 2 and "'steps'" in r.stderr and 'item 1' in r.stderr, r.stderr
    assert not any(workdir.glob('.mlops_nb/outputs/*'))  # nothing started


def test_rollback_of_unknown_model_makes_no_lock_file(workdir):
    r = mlops_nb('rollback', "it's-not-there", cwd=workdir)
    assert r.returncode == 2 and 'does not exist' in r.stderr, r.stderr
    assert not list(workdir.glob('*not-there*.lock'))  # (the store's own init lock is not the model's)


def test_ui_passes_sigterm_to_its_server(workdir):
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    exe = Path(sys.executable).parent / 'mlops-nb'
    p = subprocess.Popen([str(exe), 'ui', '--port', str(port)], cwd=workdir, env=clean_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)

    def listening():
        with socket.socket() as s: return s.connect_ex(('127.0.0.1', port)) == 0
    try:
        wait_for(lambda: listening() or p.poll() is not None, 'the UI to listen', limit=180)
        assert p.poll() is None
    finally:
        p.send_signal(signal.SIGTERM)  # as a supervisor stops it
        p.wait(60)
    wait_for(lambda: not listening(), 'the port to be released')  # no orphaned server holds it


def test_job_starts_fresh_and_its_streams_are_bounded(workdir):
    nb = write_nb(workdir / 'fresh.ipynb',
                  'import logging, sys, warnings\nlogging.basicConfig(level=logging.INFO)\nlogging.info("hello-log")\n'
                  'print(sys.argv, [f[0] for f in warnings.filters[:2]])',
                  'print("x" * 5000 + "END-OF-TEXT")', params='n: int = 0')
    r = mlops_nb('run', nb, '--json', cwd=workdir, env=clean_env(MLOPS_NB_MAX_STREAM_CHARS='1000'))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    out = nbformat.read(res['output'], as_version=4)
    first, second = out.cells[1].outputs, out.cells[2].outputs
    assert any(o.name == 'stderr' and 'INFO:root:hello-log' in o.text for o in first)  # basicConfig works as in a new kernel
    assert any(o.name == 'stdout' and "[''] ['default', 'ignore']" in o.text for o in first)
    text = ''.join(o.text for o in second if o.output_type == 'stream')
    assert len(text) < 1200 and 'output truncated after 1,000 characters' in text and 'END-OF-TEXT' not in text
    log = Path(res['output']).with_suffix('.log').read_text()
    assert 'END-OF-TEXT' in log  # the rest is kept with the run


def test_train_report_carries_no_mlflow_warnings_of_ours(workdir):
    "Integer features and an integer target from a CSV: MLflow has nothing to warn about (no ambiguous source, no integer hint)."
    import mlflow
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(0)
    df = pd.DataFrame({'age': rng.integers(18, 80, 200), 'visits': rng.integers(0, 20, 200), 'score': rng.normal(size=200)})
    df['target'] = (df.age / 10 + df.visits / 4 + df.score > 7).astype(int)
    df.to_csv(workdir / 'ints.csv', index=False)
    r = mlops_nb('run', 'train', '-p', 'dataset', 'ints.csv', '-p', 'model', 'logistic', '--json', cwd=workdir)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    out = nbformat.read(res['output'], as_version=4)
    report = '\n'.join([*(o.get('text', '') for c in out.cells if c.cell_type == 'code' for o in c.outputs),
                        Path(res['output']).with_suffix('.log').read_text(), Path(res['html']).read_text(), r.stderr])
    for text in ('UserWarning', 'interpreted in multiple ways', 'Inferred schema contains integer'):
        assert text not in report, text
    # the calls that used to warn did run: both splits are dataset inputs of the run, the model has a signature
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(res['run_id'])
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {'train', 'test'} and inputs['train'].source_type == 'local'
    assert json.loads(inputs['train'].source)['uri'] == (workdir / 'ints.csv').resolve().as_uri()
    cols = {c['name']: c['type'] for c in json.loads(inputs['train'].schema)['mlflow_colspec']}
    assert cols == {'age': 'long', 'visits': 'long', 'score': 'double', 'target': 'long'}  # the data as it was
    mlflow.set_tracking_uri(uri)
    model_uri = run.data.tags['mlops_nb.model_uri']
    sig = json.loads(mlflow.models.get_model_info(model_uri).signature.to_dict()['inputs'])
    assert {c['name']: c['type'] for c in sig} == {'age': 'long', 'visits': 'long', 'score': 'double'}
    X = pd.read_csv(workdir / 'ints.csv').drop(columns='target')  # the data as read, int64 columns: the signature takes it
    assert len(mlflow.pyfunc.load_model(model_uri).predict(X)) == len(X)
