"""Safe rollouts from evidence to promotion, on one real server and a real store: a primary, a good shadow and a
deliberately weak canary. /dashboard shows agreement and the split by version; `mlops-nb monitor` names the better of
the answer given and the shadow on labelled rows; `promote --live` refuses the weak canary, refuses too few rows, and
promotes the good shadow while the server, under --watch, swaps to it; the deploy bundle carries the rollout flags."""
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import mlops_nb
from serve_helpers import Proc, http, mlops_nb_exe, post_json, store_env, train_and_register

MODEL = 'live'
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / '.mlops_nb' / 'screenshots'
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
WEAK = '''import mlflow, numpy as np
class Weak(mlflow.pyfunc.PythonModel):
    "Says 1 whatever it is asked: the deliberately weak candidate."
    def predict(self, context, model_input, params=None): return np.ones(len(model_input), dtype=int)
mlflow.models.set_model(Weak())
'''


@pytest.fixture(scope='module')
def live(tmp_path_factory):
    "`live` v1 (champion, 5 trees) serving, v2 (40 trees) as its shadow, v3 (always 1) as a 30% canary; 200 labelled requests."
    from mlops_nb.core import get_settings
    from mlops_nb.data import load_dataset
    from mlops_nb.registry import register_run_model
    from mlops_nb.reqlog import read_log
    from mlops_nb.tracking import log_model, start_run
    d = tmp_path_factory.mktemp('rollouts')
    train_and_register(d, MODEL, 5)
    train_and_register(d, MODEL, 40, seed=1, alias=None)
    df = load_dataset('breast_cancer').sample(200, random_state=4)
    X = df.drop(columns='target')
    (d / 'weak_model.py').write_text(WEAK)
    with start_run(settings=get_settings(cwd=d, env={}), params={}, tags={'mlops_nb.job': 'train'}) as run:
        log_model(str(d / 'weak_model.py'), X.head(3))
    assert str(register_run_model(MODEL, run.run_id, get_settings(cwd=d, env={}), alias=None).version) == '3'
    srv = Proc([mlops_nb_exe(), 'serve', f'models:/{MODEL}@champion', '--shadow', f'models:/{MODEL}/2', '--canary', f'models:/{MODEL}/3',
                '--canary-share', '0.3', '--watch', '--watch-interval', '0.5', '--port', '{port}', '--log-dir', 'req',
                '--log-flush-seconds', '0.5'], d, store_env(d))
    try:
        for i in range(200):
            st, h, doc = post_json(srv.base, {'dataframe_records': X.iloc[[i]].to_dict('records')}, headers={'X-Request-Id': f'r{i}'})
            assert st == 200, doc
        st, _, body = http('POST', srv.base + '/labels', json.dumps([{'request_id': f'r{i}', 'label': int(y)} for i, y in enumerate(df['target'])]).encode())
        assert st == 200 and json.loads(body) == {'accepted': 200}
        deadline = time.monotonic() + 120  # the shadow scores off the response path and the log is written every 0.5 s
        while time.monotonic() < deadline and not ((d / 'req').is_dir() and len(read_log(d / 'req')) == 200): time.sleep(0.2)
        log = read_log(d / 'req')
        assert len(log) == 200 and log['_mlops_shadow_prediction'].notna().all(), srv.output()
        yield d, srv, log
    finally:
        srv.stop()


def test_dashboard_shows_agreement_and_the_split_by_version(live):
    d, srv, log = live
    data = json.loads(http('GET', srv.base + '/dashboard.json')[2])
    same = (log['prediction'].astype(int) == log['_mlops_shadow_prediction'].astype(int)).mean()
    assert data['shadow']['rows'] == 200 and data['shadow']['kind'] == 'same label'
    assert data['shadow']['agreement'] == pytest.approx(same) and data['shadow']['by_version'] == {'2': pytest.approx(same)}
    split = {(r['version'], r['role']): r for r in data['versions']}
    n3 = int((log['_mlops_model_version'] == '3').sum())
    assert 20 <= n3 <= 100 and split[('3', 'canary')]['requests'] == n3 and split[('3', 'canary')]['failures'] == 0
    assert split[('1', 'primary')]['requests'] == 200 - n3 and split[('1', 'primary')]['p95_ms'] > 0
    assert split[('2', 'shadow')]['rows'] == 200 and split[('2', 'shadow')]['calls'] >= 1
    page = http('GET', srv.base + '/dashboard')[2].decode()
    assert f'<b>shadow agreed on {same:.0%}</b> of 200 rows' in page and 'id="version-table"' in page
    if CHROMIUM:  # what a person sees: the agreement chart drawn, the table there
        SHOTS.mkdir(parents=True, exist_ok=True)
        flags = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
                 f'--user-data-dir={tempfile.mkdtemp()}', '--window-size=1240,1600']
        dom = subprocess.run([CHROMIUM, *flags, '--dump-dom', srv.base + '/dashboard'], capture_output=True, text=True, timeout=120).stdout
        assert 'aria-label="Shadow agreement"' in dom and 'id="version-table"' in dom, dom[:2000]
        subprocess.run([CHROMIUM, *flags, f'--screenshot={SHOTS / "dashboard_rollout.png"}', srv.base + '/dashboard'], capture_output=True, timeout=120)


def test_monitor_names_the_better_model_on_the_same_labelled_rows(live):
    d, srv, log = live
    r = mlops_nb('monitor', MODEL, '--log-dir', 'req', '--window', '', '--min-labelled', '100000', '--json', cwd=d, env=store_env(d))
    doc = json.loads(r.stdout)
    ro = doc['quality']['rollout']
    pairs = {(p['answer']['version'], p['shadow']['version']): p for p in ro['pairs']}
    weak = pairs[('3', '2')]  # rows the weak canary answered, which the shadow also scored
    assert weak['labelled_rows'] == int((log['_mlops_model_version'] == '3').sum()) and weak['better_version'] == '2'
    assert weak['shadow']['metrics']['accuracy']['value'] > weak['answer']['metrics']['accuracy']['value'] + 0.2
    assert weak['difference']['low'] > 0 and pairs[('1', '2')]['labelled_rows'] + weak['labelled_rows'] == 200
    assert doc["monitor_run_id"] and doc["action"] != "monitor_failed", r.stdout  # the monitor job ran: its HTML report holds the comparison
    from mlflow import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
    html = next(a.path for a in c.list_artifacts(doc['monitor_run_id'], 'notebook') if a.path.endswith('.html'))
    text = Path(c.download_artifacts(doc['monitor_run_id'], html, str(d))).read_text()
    assert 'Primary and shadow' in text and 'version 2 (the shadow) would have been better on' in text
    assert c.get_run(doc['monitor_run_id']).data.metrics['rollout.shadow.accuracy'] > 0


def test_promote_live_refuses_weak_and_thin_evidence_and_promotes_a_good_shadow_the_server_swaps_to(live):
    d, srv, log = live
    n3 = int((log['_mlops_model_version'] == '3').sum())
    from mlops_nb.core import GateFailed, get_settings
    from mlops_nb.registry import Live, LiveEvidenceError, promote
    s = get_settings(cwd=d, env={})
    with pytest.raises(GateFailed) as e:  # the weak canary, on the rows it answered, against the champion re-scored on them
        promote(MODEL, version='3', live=Live(d / 'req', min_labelled=10), settings=s)
    g = e.value.promotion.gate
    assert g.rows[0]['value'] == f'{n3} rows' and [r['check'] for r in g.failed][:1] == ['accuracy >= 0.8'], g.table()
    with pytest.raises(LiveEvidenceError) as e:  # too few labelled rows: nothing gated, and the message says where to look
        promote(MODEL, version='2', live=Live(d / 'req', min_labelled=500), settings=s)
    msg = f'{e.value}'
    assert "Version 2 of 'live' has 200 labelled rows in the request log" in msg and '200 as shadow' in msg and '--min-labelled' in msg
    assert 'POST /labels' in msg and e.value.exit_code == 1
    r = mlops_nb('promote', MODEL, '--version', '2', '--live', '--log-dir', 'req', '--json', cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert (doc['version'], doc['previous'], doc['moved'], doc['gate']['champion_version']) == ('2', '1', True, '1')
    assert doc['gate']['checks'][0]['value'] == '200 rows' and doc['gate']['checks'][1]['passed']
    deadline = time.monotonic() + 120  # --watch follows the alias: the server now answers with version 2
    while time.monotonic() < deadline and json.loads(http('GET', srv.base + '/version')[2])['version'] != '2': time.sleep(0.3)
    st, h, _ = post_json(srv.base, {'dataframe_records': log.drop(columns=[c for c in log if c.startswith(('_mlops', 'prediction', 'proba'))]).head(1).to_dict('records')},
                         headers={'X-Client-Key': 'after-the-swap'})
    assert st == 200 and json.loads(http('GET', srv.base + '/version')[2])['version'] == '2'


def test_deploy_bundle_carries_shadow_and_canary(live, tmp_path):
    d, srv, log = live
    r = mlops_nb('deploy', f'models:/{MODEL}/1', '--out', tmp_path / 'ctx', '--shadow', f'models:/{MODEL}/2', '--canary', f'models:/{MODEL}/3',
                 '--canary-share', '0.25', '--json', cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc['args'] == ['--shadow', 'shadow', '--canary', 'canary', '--canary-share', '0.25']
    assert {k: v['version'] for k, v in doc['rollout'].items()} == {'shadow': '2', 'canary': '3'}
    import yaml
    ctx = tmp_path / 'ctx'
    c = yaml.safe_load((ctx / 'k8s' / 'deployment.yaml').read_text())['spec']['template']['spec']['containers'][0]
    assert c['args'] == ['--workers', '2', *doc['args']]
    text = (ctx / 'Dockerfile').read_text()
    assert 'COPY shadow/ ./shadow/' in text and 'COPY canary/ ./canary/' in text
    # the image's entrypoint with the Deployment's args, in the bundle's folder, the store out of reach
    argv = ['serve', 'model', '--host', '127.0.0.1', '--port', '{port}', '--log-dir', 'requests', *c['args'][2:]]
    p = Proc([mlops_nb_exe(), *argv], ctx, store_env(ctx, MLFLOW_TRACKING_URI='http://127.0.0.1:9'))
    try:
        health = json.loads(http('GET', p.base + '/health')[2])
        assert (health['version'], health['shadow']['version'], health['canary']['version'], health['canary']['share']) == ('1', '2', '3', 0.25)
    finally:
        assert p.terminate() == 0, p.output()
