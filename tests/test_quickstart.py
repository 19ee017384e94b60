"""`mlops-nb quickstart` end to end on the embedded default store, as a new user runs it."""
import json

import nbformat
import pytest

from conftest import mlops_nb

LINEAGE = ['git_sha', 'git_dirty', 'package_version', 'notebook', 'notebook_sha256', 'data_fingerprint', 'seed', 'python']


@pytest.fixture(scope='module')
def quickstart(tmp_path_factory):
    "Run the quickstart twice in one empty directory."
    d = tmp_path_factory.mktemp('qs')
    first = mlops_nb('quickstart', cwd=d)
    second = mlops_nb('quickstart', '--json', cwd=d)
    return d, first, second


def _client(d):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")


def test_quickstart_prints_summary_and_next_steps(quickstart):
    d, first, _ = quickstart
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert 'train run:' in out and 'roc_auc=' in out
    assert 'mlops-nb ui' in out and 'mlops-nb serve models:/breast_cancer@champion' in out
    assert (d / 'mlflow.db').exists() and (d / 'mlartifacts').is_dir()
    assert 'database tables' not in first.stderr and ' INFO ' not in first.stderr, first.stderr  # no library log lines (-v shows them)
    # held-out rows a few percent beyond the training range are not drift; the 8 columns further out are information
    assert 'warnings (drift)' not in out and 'info: out_of_range in 8 columns' in out


def test_train_run_is_complete(quickstart):
    d, first, second = quickstart
    res = json.loads(second.stdout)
    c = _client(d)
    run = c.get_run(res['train']['run_id'])
    assert run.info.status == 'FINISHED'
    assert run.data.params['dataset'] == 'breast_cancer' and run.data.params['seed'] == '0'
    assert run.data.metrics['roc_auc'] > 0.95
    for k in LINEAGE:
        assert f'mlops_nb.{k}' in run.data.tags, k
    arts = {a.path for a in c.list_artifacts(run.info.run_id, 'notebook')}
    assert arts == {'notebook/train.ipynb', 'notebook/train.html'}
    top = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {'environment.txt', 'schema.json', 'roc.png', 'confusion_matrix.png'} <= top
    nb = nbformat.read(c.download_artifacts(run.info.run_id, 'notebook/train.ipynb', str(d)), as_version=4)
    injected = [c for c in nb.cells if 'injected-parameters' in c.metadata.get('tags', [])]
    assert injected and 'breast_cancer' in injected[0].source
    # the report carries no MLflow warning caused by our own calls (a bundled name is no ambiguous source)
    assert not [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs if 'UserWarning' in o.get('text', '')]
    assert {d.dataset.source_type for d in run.inputs.dataset_inputs} == {'code'}


def test_evaluate_run_and_registered_versions(quickstart):
    d, _, second = quickstart
    res = json.loads(second.stdout)
    c = _client(d)
    ev = c.get_run(res['evaluate']['run_id'])
    assert ev.info.status == 'FINISHED' and ev.data.params['train_run_id'] == res['train']['run_id']
    assert ev.data.metrics['roc_auc'] > 0.95
    train = c.get_run(res['train']['run_id'])  # evaluated on the train job's held-out rows, never on training rows
    assert ev.data.tags['mlops_nb.data_fingerprint.eval'] == train.data.tags['mlops_nb.data_fingerprint.test']
    assert abs(ev.data.metrics['roc_auc'] - train.data.metrics['roc_auc']) < 1e-9
    versions = c.search_model_versions("name='breast_cancer'")
    assert sorted(int(v.version) for v in versions) == [1, 2]  # running it twice adds a version
    champ = c.get_model_version_by_alias('breast_cancer', 'champion')
    assert str(champ.version) == '2' and champ.run_id == res['train']['run_id']
    assert champ.tags['mlops_nb.data_fingerprint'] == c.get_run(champ.run_id).data.tags['mlops_nb.data_fingerprint']


def test_champion_loads_with_plain_mlflow(quickstart):
    d, _, _ = quickstart
    import mlflow
    from mlops_nb.data import load_dataset
    mlflow.set_tracking_uri(f"sqlite:///{d / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model('models:/breast_cancer@champion')
    X = load_dataset('breast_cancer').drop(columns='target').head(5)
    assert len(model.predict(X)) == 5
    mlflow.set_tracking_uri(None)


def test_champion_is_served_over_http(quickstart):
    "The quickstart's next step works: `mlops-nb serve models:/breast_cancer@champion` answers real requests."
    import socket, subprocess, sys, time, urllib.request
    from pathlib import Path
    from conftest import clean_env
    from mlops_nb.data import load_dataset
    d, _, _ = quickstart
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    exe = Path(sys.executable).parent / 'mlops-nb'
    proc = subprocess.Popen([str(exe), 'serve', 'models:/breast_cancer@champion', '--port', str(port)], cwd=d,
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300  # generous: a shared CI machine under load starts a server slowly
        while True:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/ping', timeout=2) as r:
                    if r.status == 200: break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, 'server did not answer /ping within 300 s'
                time.sleep(0.5)
        X = load_dataset('breast_cancer').drop(columns='target').head(3)
        body = json.dumps({'dataframe_split': {'columns': list(X.columns), 'data': X.values.tolist()}}).encode()
        req = urllib.request.Request(f'http://127.0.0.1:{port}/invocations', body, {'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=30) as r:
            preds = json.loads(r.read())['predictions']
        assert len(preds) == 3 and set(preds) <= {0, 1}
    finally:
        proc.terminate()
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: proc.kill()
