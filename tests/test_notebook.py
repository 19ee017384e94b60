"""The notebook front end from inside a real Jupyter kernel: cells calling `mlops_nb.run/sweep/pipeline/runs/compare/track`
and the `%mlops` magic are executed with nbclient; their outputs (HTML cards, tables, errors) and the MLflow store are checked."""
import json
import os
import time
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from conftest import clean_env, mlops_nb

SQUARE = new_notebook(cells=[
    new_code_cell('x: int = 2  # a number to square', metadata={'tags': ['parameters']}),
    new_code_cell('import mlops_nb\nassert x >= 0, "x must not be negative"\nmlops_nb.record("square", x * x)')],
    metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})


@pytest.fixture
def project(tmp_path, monkeypatch):
    "A scratch folder with the square job; the kernel started by a test gets a clean environment pointing at its store."
    d = tmp_path / 'proj'
    d.mkdir()
    nbformat.write(SQUARE, d / 'square.ipynb')
    for k in list(os.environ):
        if k.startswith(('MLFLOW_', 'MLOPS_NB_', 'JPY_')): monkeypatch.delenv(k)
    for k, v in clean_env().items():
        if k.startswith(('MLFLOW_', 'MLOPS_NB_')): monkeypatch.setenv(k, v)
    return d


def execute(d: Path, *cells: str, name: str = 'session.ipynb', raises: tuple = ()) -> nbformat.NotebookNode:
    "Write a notebook of `cells` to `d/name`, execute it in a real kernel with nbclient in `d`, return it executed."
    nb = new_notebook(cells=[new_code_cell(c, metadata={'tags': ['raises-exception']} if i in raises else {}) for i, c in enumerate(cells)],
                      metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    nbformat.write(nb, d / name)
    NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(d)}}).execute()
    nbformat.write(nb, d / f'executed-{name}')  # kept for a person looking at a failure
    return nb


def outputs(cell, mime: str) -> str:
    "Every output of `cell` in `mime` (stream text for 'stream'), joined."
    out = []
    for o in cell.outputs:
        if mime == 'stream' and o.output_type == 'stream': out.append(o.text)
        elif mime in o.get('data', {}): out.append(o.data[mime])
    return '\n'.join(out)


def store(d: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")


def all_runs(c: MlflowClient):
    exp = c.get_experiment_by_name('mlops_nb')
    return c.search_runs([exp.experiment_id], max_results=100) if exp else []


def test_run_in_a_kernel_returns_cards_and_a_failure_does_not_raise(project, monkeypatch):
    monkeypatch.setenv('MLOPS_NB_WORKER_IDLE', '300')  # the project's warm worker outlives the kernel's first imports
    try:
        nb = execute(project,
                     'import mlops_nb\nres = mlops_nb.run("square.ipynb", x=3)\nres',
                     'bad = mlops_nb.run("square.ipynb", x=-1)\nbad',
                     'try:\n    mlops_nb.run("square.ipynb", x=-2, raise_on_failure=True)\nexcept mlops_nb.MlopsNbError as e:\n'
                     '    print("raised", type(e).__name__, e.result.run_id)',
                     'res2 = mlops_nb.run("square.ipynb", x=5, progress=False)\nprint(res2.engine, res2.status)')
        st = json.loads(mlops_nb('worker', 'status', '--json', cwd=project, env=clean_env(MLOPS_NB_WORKER_IDLE='300')).stdout)
        assert st['running'] and next(p for p in st['projects'] if p['path'] == str(project))['jobs'] == 4  # every job forked from the warm worker
    finally:
        mlops_nb('worker', 'stop', cwd=project)
    c = store(project)
    ok, bad, raised, again = nb.cells
    html = outputs(ok, 'text/html')
    assert 'mlops-nb-card' in html and 'FINISHED' in html and 'square' in html and '9' in html
    rid = next(r.info.run_id for r in all_runs(c) if r.data.params.get('x') == '3')
    assert rid in html and '#/experiments/' in html
    run = c.get_run(rid)
    assert run.info.status == 'FINISHED' and run.data.metrics['square'] == 9.0 and run.data.tags['mlops_nb.job'] == 'square'
    assert 'square.ipynb: FINISHED' in outputs(ok, 'text/plain')  # the plain-text repr stays useful
    assert '1 of 1 job(s) finished in' in html  # the progress line, updated in place, says how it ended
    # the failed job: a card with the failing cell's source and the error, and no error output in the caller's cell
    bhtml = outputs(bad, 'text/html')
    assert 'FAILED' in bhtml and 'x must not be negative' in bhtml and 'assert x &gt;= 0' in bhtml
    assert not [o for o in bad.outputs if o.output_type == 'error']
    failed = [r for r in all_runs(c) if r.data.params.get('x') in ('-1', '-2')]
    assert len(failed) == 2 and all(r.info.status == 'FAILED' for r in failed)
    text = outputs(raised, 'stream')
    assert text.startswith('raised JobFailed') and any(r.info.run_id in text for r in failed)
    assert 'fast FINISHED' in outputs(again, 'stream')
    assert len(all_runs(c)) == 4


def test_magic_runs_sweeps_lists_and_compares(project, monkeypatch):
    monkeypatch.setenv('MLOPS_NB_WORKER', '0')  # jobs fork from the kernel's own warm process (the worker is tested above)
    (project / 'pipe.yaml').write_text('steps:\n  first: {notebook: square.ipynb, parameters: {x: 2}}\n'
                                       '  second: {notebook: square.ipynb, parameters: {x: 3}, needs: [first]}\n')
    nb = execute(project,
                 '%load_ext mlops_nb',
                 '%mlops run square.ipynb -p x 4',
                 '%mlops sweep square.ipynb --grid x=1,3,2 --metric square --workers 2',
                 '%mlops pipeline run pipe.yaml',
                 '%mlops runs square',
                 'import mlops_nb\ndf = mlops_nb.runs("square", kind="job")\nids = list(df.run_id)\nprint(len(ids))',
                 '%mlops compare {ids[0]} {ids[1]}',
                 '%mlops run nothing-here.ipynb',
                 '%mlops run square.ipynb -p x many',
                 raises=(7, 8))
    c = store(project)
    runs = all_runs(c)
    one = next(r for r in runs if r.data.params.get('x') == '4' and 'mlops_nb.sweep_id' not in r.data.tags)
    assert one.data.metrics['square'] == 16.0 and one.info.run_id in outputs(nb.cells[1], 'text/html')
    # the sweep: a parent with three children; its table sorted by the metric, best first and highlighted
    parent = next(r for r in runs if r.data.tags.get('mlops_nb.sweep') == 'parent')
    kids = [r for r in runs if r.data.tags.get('mlops_nb.sweep_id') == parent.info.run_id]
    assert sorted(r.data.metrics['square'] for r in kids) == [1.0, 4.0, 9.0]
    sweep_html = outputs(nb.cells[2], 'text/html')
    order = [sweep_html.index(r.info.run_id[:12]) for r in sorted(kids, key=lambda r: -r.data.metrics['square'])]
    assert order == sorted(order) and parent.info.run_id in sweep_html and '#fff3cd' in sweep_html
    # the pipeline: its DAG with states, and a parent run with both steps finished
    pipe_html = outputs(nb.cells[3], 'text/html')
    assert '<svg' in pipe_html and 'first' in pipe_html and 'second' in pipe_html
    prun = next(r for r in runs if r.data.tags.get('mlops_nb.pipeline') == 'pipe')
    assert prun.info.status == 'FINISHED' and prun.info.run_id in pipe_html
    assert prun.data.tags['mlops_nb.step.second.state'] == 'finished'
    # runs: a DataFrame of every run of the notebook (jobs, sweep jobs, pipeline steps)
    listing = outputs(nb.cells[4], 'text/html')
    jobs = [r for r in runs if r.data.tags.get('mlops_nb.job') == 'square']
    assert len(jobs) == 6 and all(r.info.run_id in listing for r in jobs)
    # compare: the two newest job runs side by side, the differing parameter marked, the notebooks' difference
    newest = sorted(jobs, key=lambda r: -r.info.start_time)[:2]
    cmp_html = outputs(nb.cells[6], 'text/html')
    assert all(r.info.run_id[:8] in cmp_html for r in newest) and '≠' in cmp_html and 'notebook difference' in cmp_html
    assert 'differs' in outputs(nb.cells[6], 'text/plain')
    # bad input: the CLI's message as IPython's UsageError (shown without a traceback; the cell fails), and nothing started
    missing, bad = (outputs(cell, 'stream') for cell in nb.cells[7:9])
    assert missing.startswith('UsageError: Notebook nothing-here.ipynb does not exist.') and 'hint:' in missing
    assert bad.startswith("UsageError: Parameter 'x' of ") and "expects int, got 'many'" in bad
    assert len(all_runs(c)) == len(runs)


def test_track_makes_the_session_a_run_with_its_snapshot(project, monkeypatch):
    monkeypatch.setenv('MLOPS_NB_WORKER', '0')
    path = project / 'explore.ipynb'
    monkeypatch.setenv('JPY_SESSION_NAME', str(path))  # as Jupyter Server tells a kernel which notebook it runs
    nb = execute(project,
                 'import mlops_nb\napi_token = mlops_nb.Secret("s3cr3t-tok3n")\nt = mlops_nb.track("explore")\nt',
                 'mlops_nb.record("loss", 0.5, step=0)',
                 'mlops_nb.record("loss", 0.25, step=1)\nmlops_nb.record("token_used", api_token)',
                 't.end()\nprint(t.run_id)',
                 'with mlops_nb.track("ctx") as t2:\n    mlops_nb.record("auc", 0.9)\nprint(t2.run_id)',
                 'mlops_nb.record("after", 1.0)',
                 'try:\n    with mlops_nb.track("boom") as t3:\n        1 / 0\nexcept ZeroDivisionError:\n    print(t3.run_id)',
                 name='explore.ipynb')
    c = store(project)
    rid = outputs(nb.cells[3], 'stream').strip()
    r = c.get_run(rid)
    assert r.info.status == 'FINISHED' and r.info.run_name == 'explore'
    assert [m.value for m in sorted(c.get_metric_history(rid, 'loss'), key=lambda m: m.step)] == [0.5, 0.25]
    t = r.data.tags
    assert t['mlops_nb.snapshot'] == 'notebook/explore.ipynb' and t['mlops_nb.interactive'] == 'explore'
    assert t['mlops_nb.notebook'] == str(path.resolve()) and len(t['mlops_nb.notebook_sha256']) == 64
    assert t['mlops_nb.driver_pid'].isdigit() and 'mlops_nb.git_sha' in t and 'mlops_nb.package_version' in t
    assert r.data.params['token_used'] == '***'  # secrets keep their guarantees: not in params ...
    snap = Path(c.download_artifacts(rid, 'notebook/explore.ipynb', str(project / 'dl')))
    text = snap.read_text()
    assert 'mlops_nb.track(\\"explore\\")' in text and 's3cr3t-tok3n' not in text  # ... nor in the snapshot
    assert 'tracking <b>explore</b>' in outputs(nb.cells[0], 'text/html')
    ctx = c.get_run(outputs(nb.cells[4], 'stream').strip())
    assert ctx.info.status == 'FINISHED' and ctx.data.metrics == {'auc': 0.9}
    assert c.get_run(outputs(nb.cells[6], 'stream').strip()).info.status == 'FAILED'
    assert not any('after' in x.data.metrics for x in all_runs(c))  # outside track, record only remembers
    assert len(all_runs(c)) == 3
    # the same runs from a terminal: `mlops-nb runs` and `mlops-nb compare`
    listed = mlops_nb('runs', '--kind', 'interactive', '--json', cwd=project)
    assert listed.returncode == 0 and {r['run_id'] for r in json.loads(listed.stdout)} == {x.info.run_id for x in all_runs(c)}
    cmp = mlops_nb('compare', rid, ctx.info.run_id, cwd=project)
    assert cmp.returncode == 0 and 'metrics (* differs)' in cmp.stdout and 'notebook difference' in cmp.stdout
    assert mlops_nb('compare', rid, cwd=project).returncode == 2  # one run is not a comparison


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_mlops_run_in_jupyterlab_shows_the_job_card(project, tmp_path):
    "A real JupyterLab (token set) driven by headless Chromium: `%mlops run` in a notebook renders the job card."
    import secrets
    import subprocess
    import sys
    import urllib.request
    from browser import chromium, chromium_missing, out_dir, wait_for
    from conftest import wait_for as wait_until
    if (why := chromium_missing()): pytest.skip(why)
    nb = new_notebook(cells=[new_code_cell('%load_ext mlops_nb'), new_code_cell('%mlops run square.ipynb -p x 7')],
                      metadata=SQUARE.metadata)
    nbformat.write(nb, project / 'demo.ipynb')
    port, token = _free_port(), secrets.token_hex(16)
    jdir = tmp_path / 'jupyter'
    news = jdir / 'settings' / '@jupyterlab' / 'apputils-extension' / 'notification.jupyterlab-settings'
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "Would you like to get notified about Jupyter news?" over the page
    env = clean_env(MLOPS_NB_WORKER='0', JUPYTER_CONFIG_DIR=str(jdir / 'config'), JUPYTER_RUNTIME_DIR=str(jdir / 'runtime'))
    lab = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', f'--port={port}', '--ip=127.0.0.1',
                            f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={project}',
                            f'--LabApp.workspaces_dir={jdir / "workspaces"}', f'--LabApp.user_settings_dir={jdir / "settings"}',
                            '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
                           cwd=project, env=env, stdout=open(tmp_path / 'lab.log', 'w'), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up():
            try: return urllib.request.urlopen(f'http://127.0.0.1:{port}/api/status?token={token}', timeout=2).status == 200
            except OSError: return False
        wait_until(up, 'JupyterLab to answer', limit=180)
        with chromium(tmp_path) as d:
            d.get(f'http://127.0.0.1:{port}/lab/tree/demo.ipynb?token={token}')
            wait_for(d, '.jp-Notebook .jp-Cell', timeout=180)
            wait_for(d, '#jp-main-statusbar', timeout=180, text='Idle')  # the kernel is up and connected
            from selenium.webdriver.common.action_chains import ActionChains
            from selenium.webdriver.common.keys import Keys
            wait_for(d, '.jp-Notebook .jp-Cell .jp-InputArea-editor', timeout=30).click()
            for _ in range(2):  # Shift+Enter twice: run each cell, as a person would
                ActionChains(d).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
                time.sleep(1)
            shot = out_dir('notebook') / 'jupyterlab-mlops-run.png'
            try: card = wait_for(d, '.jp-OutputArea .mlops-nb-card', timeout=600, text='FINISHED')  # a generous limit for a busy machine
            finally: d.save_screenshot(str(shot))  # kept either way: what the page showed
            assert 'square.ipynb' in card.text and 'MLflow UI' in card.text and 'executed notebook' in card.text
    finally:
        import signal
        os.killpg(lab.pid, signal.SIGTERM)
        lab.wait(30)
    runs = [r for r in all_runs(store(project)) if r.data.params.get('x') == '7']
    assert len(runs) == 1 and runs[0].info.status == 'FINISHED' and runs[0].data.metrics['square'] == 49.0
