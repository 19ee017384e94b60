"""Model quality in production, from outside: a champion served with default flags (its request log under the
project), labels that arrive later by file and by POST /labels, a healthy window, a concept-drift window (inputs
unchanged, 40% of labels contradict the model) that alerts through a real webhook, a window without labels whose
estimated accuracy (CBPE) is close to the realized one, the quality gauges on /metrics and the dashboard's chart."""
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, mlops_nb
from serve_helpers import Proc, http as http_call, mlops_nb_exe, post_json, store_env

from mlops_nb.loop import shift_data

MODEL = 'quality'
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


def now() -> str: return datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


class _Hook(http.server.BaseHTTPRequestHandler):
    "A tiny alert receiver: keeps every JSON body it is sent."
    bodies = []
    def do_POST(self):
        _Hook.bodies.append(json.loads(self.rfile.read(int(self.headers['Content-Length']))))
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass


def serve(d: Path, *flags, env=None) -> Proc:
    return Proc([mlops_nb_exe(), 'serve', f'models:/{MODEL}@champion', '--port', '{port}', *flags], cwd=d, env=env or store_env(d))


def send(srv: Proc, df: pd.DataFrame, prefix: str, rows_per_request: int = 10) -> pd.DataFrame:
    "Send `df` in requests with our own ids; the rows as logged: request_id, row, prediction, target."
    X, out = df.drop(columns='target'), []
    for i in range(0, len(df), rows_per_request):
        rid = f'{prefix}-{i // rows_per_request}'
        st, _, body = post_json(srv.base, {'dataframe_split': X.iloc[i:i + rows_per_request].to_dict(orient='split', index=False)},
                                headers={'x-request-id': rid})
        assert st == 200, body
        out += [{'request_id': rid, 'row': j, 'prediction': p, 'target': int(y)}
                for j, (p, y) in enumerate(zip(body['predictions'], df['target'].iloc[i:i + rows_per_request]))]
    return pd.DataFrame(out)


def post_labels(srv: Proc, rows: pd.DataFrame, headers=None):
    doc = [{'request_id': r.request_id, 'row': int(r.row), 'label': int(r.label)} for r in rows.itertuples()]
    return http_call('POST', srv.base + '/labels', json.dumps(doc).encode(), headers=headers)


def monitor(d: Path, *args):
    r = mlops_nb('monitor', MODEL, '--json', *args, cwd=d, env=store_env(d))
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout), r


@pytest.fixture(scope='module')
def scenario(tmp_path_factory):
    "A calibrated champion served with default flags; three windows of traffic: healthy, concept drift, unlabelled."
    d = tmp_path_factory.mktemp('quality')
    shift_data(3000, seed=1).to_csv(d / 'train.csv', index=False)
    r = mlops_nb('run', 'train', '-p', 'dataset', 'train.csv', '-p', 'target', 'target', '-p', 'model', 'logistic', '--json', cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stdout + r.stderr
    r = mlops_nb('promote', MODEL, '--run', json.loads(r.stdout)['run_id'], cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stdout + r.stderr
    hook = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    w = {'t0': now()}
    srv = serve(d)  # default flags: the request log goes to .mlops_nb/requests/quality/
    try:
        healthy = send(srv, shift_data(600, seed=5), 'healthy').assign(label=lambda f: f['target'])
        st, _, body = post_labels(srv, healthy.iloc[:300])  # half of the labels through the server...
        assert (st, json.loads(body)) == (200, {'accepted': 300})
        healthy.iloc[300:][['request_id', 'row', 'label']].to_csv(d / 'labels_healthy.csv', index=False)  # ...half by file
        w['t1'] = now()
        concept = send(srv, shift_data(600, seed=6), 'concept')
        flip = np.random.default_rng(0).random(len(concept)) < 0.4  # 40% of labels contradict the model
        concept['label'] = np.where(flip, 1 - concept['prediction'], concept['prediction'])
        assert post_labels(srv, concept)[0] == 200
        w['t2'] = now()
        w['unlabelled'] = send(srv, shift_data(1500, seed=7), 'quiet')
        w['t3'] = now()
    finally:
        assert srv.terminate() == 0, srv.output()  # SIGTERM flushes the request log
    yield d, w, f'http://127.0.0.1:{hook.server_port}/alerts', srv.output()
    hook.shutdown(); hook.server_close()


def test_default_server_logs_under_the_project_with_probabilities(scenario):
    d, w, _, out = scenario
    from mlops_nb.reqlog import read_labels, read_log
    log_dir = d / '.mlops_nb' / 'requests' / MODEL
    assert f'request log: {log_dir}' in out
    log = read_log(log_dir)
    assert len(log) == 2700 and {'proba_0', 'proba_1'} <= set(log.columns)
    assert len(read_labels(log_dir)) == 900  # 300 healthy + 600 concept-drift labels, through POST /labels


def test_healthy_window_exits_0_with_quality_on_every_labelled_row(scenario):
    d, w, hook, _ = scenario
    _Hook.bodies.clear()
    rc, doc, r = monitor(d, '--start', w['t0'], '--end', w['t1'], '--labels', 'labels_healthy.csv', '--webhook', hook)
    assert (rc, doc['action']) == (0, 'no_drift'), r.stderr + json.dumps(doc, indent=1)
    q = doc['quality']
    assert q['labelled_rows'] == 600 and q['alert'] is False and doc['labelled_rows'] == 600
    acc = q['realized']['accuracy']
    assert acc['n'] == 600 and acc['low'] < acc['value'] < acc['high'] and acc['value'] > 0.85
    assert {'accuracy', 'roc_auc', 'f1'} <= set(q['realized']) and {'accuracy', 'roc_auc'} <= set(q['estimated'])
    assert _Hook.bodies == []  # nothing to alert about
    from mlflow import MlflowClient  # the monitor run's report holds both: realized and estimated
    c = MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
    ms = c.get_run(doc['monitor_run_id']).data.metrics
    assert ms['quality.accuracy'] == acc['value'] and ms['quality.labelled_rows'] == 600 and 'quality_estimated.accuracy' in ms
    assert 'quality.csv' in {a.path for a in c.list_artifacts(doc['monitor_run_id'])}


def test_concept_drift_alerts_through_the_webhook_though_no_input_drifted(scenario):
    d, w, hook, _ = scenario
    _Hook.bodies.clear()
    rc, doc, r = monitor(d, '--start', w['t1'], '--end', w['t2'], '--webhook', hook, '--min-labelled', '100000')
    assert rc == 1, r.stderr + json.dumps(doc, indent=1)
    assert doc['drift']['drifted'] is False and doc['drift']['drifted_columns'] == []  # inputs from the same distribution
    assert doc['trigger'] == 'quality' and doc['action'] == 'too_few_labels' and doc['quality']['labelled_rows'] == 600
    assert doc['webhook']['ok'] and len(_Hook.bodies) == 1
    alert = {a['metric']: a for a in _Hook.bodies[0]['alerts']}
    acc = alert['accuracy']
    assert abs(acc['value'] - 0.6) < 0.06 and acc['high'] < acc['bound'] and acc['n'] == 600 and acc['low'] < acc['value']
    assert _Hook.bodies[0]['model_name'] == MODEL and _Hook.bodies[0]['trigger'] == 'quality'
    # people read the same in the summary
    r = mlops_nb('monitor', MODEL, '--start', w['t1'], '--end', w['t2'], '--min-labelled', '100000', cwd=d, env=store_env(d))
    assert r.returncode == 1 and 'QUALITY below the gate' in r.stdout and 'ALERT' in r.stdout, r.stdout + r.stderr


def test_without_labels_the_estimate_is_close_to_the_realized_accuracy(scenario):
    d, w, _, _ = scenario
    rc, doc, r = monitor(d, '--start', w['t2'], '--end', w['t3'])
    assert rc == 0 and doc['quality']['labelled_rows'] == 0 and doc['quality']['realized'] == {}, r.stderr
    un = w['unlabelled']
    realized = float((un['prediction'] == un['target']).mean())  # what the labels will say when they come
    assert abs(doc['quality']['estimated']['accuracy'] - realized) < 0.03, (doc['quality']['estimated'], realized)


def test_metrics_and_dashboard_show_realized_and_estimated_quality(scenario):
    d, w, _, _ = scenario
    # the last monitor run (test order: healthy, concept, unlabelled) left the estimate; run the concept window again for realized
    rc, doc, _ = monitor(d, '--start', w['t1'], '--end', w['t2'], '--min-labelled', '100000')
    assert rc == 1
    srv = serve(d)
    try:
        st, _, body = http_call('GET', srv.base + '/metrics')
        text = body.decode()
        from prometheus_client.parser import text_string_to_metric_families
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        got = {(s.labels['metric'], s.labels['kind']): s.value for s in fams['mlops_nb_model_quality'].samples}
        assert abs(got[('accuracy', 'realized')] - doc['quality']['realized']['accuracy']['value']) < 1e-9
        assert ('accuracy', 'estimated') in got and all(s.labels['version'] == '1' for s in fams['mlops_nb_model_quality'].samples)
        assert fams['mlops_nb_model_quality_alert'].samples[0].value == 1.0
        assert fams['mlops_nb_model_quality_labelled_rows'].samples[0].value == 600
        st, _, body = http_call('GET', srv.base + '/dashboard.json?window=1d')
        dash = json.loads(body)
        assert len(dash['quality_history']) >= 3 and 'accuracy' in dash['quality_bounds']
        if CHROMIUM:
            shot = ROOT / 'docs' / 'img' / 'dashboard-quality.png'
            shot.parent.mkdir(parents=True, exist_ok=True)
            flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                     '--disable-component-update', '--disable-sync', f'--user-data-dir={tempfile.mkdtemp()}', '--window-size=1240,1300']
            dom = subprocess.run([CHROMIUM, *flags, '--dump-dom', srv.base + '/dashboard?window=1d'], capture_output=True, text=True, timeout=120).stdout
            assert 'Quality (accuracy) by monitor window' in dom and 'id="quality-table"' in dom and 'QUALITY BELOW THE GATE' in dom and dom.count('class="threshold"') >= 1, dom[:2000]
            subprocess.run([CHROMIUM, *flags, f'--screenshot={shot}', srv.base + '/dashboard?window=1d'], capture_output=True, timeout=120)
            assert shot.is_file() and shot.stat().st_size > 10_000
    finally: srv.stop()


def test_labels_need_a_token_beyond_this_machine(scenario):
    d, *_ = scenario
    row = pd.DataFrame({'request_id': ['healthy-0'], 'row': [0], 'label': [1]})
    srv = serve(d, '--host', '0.0.0.0')
    try:
        st, _, body = post_labels(srv, row)
        assert st == 403 and b'MLOPS_NB_LABELS_TOKEN' in body
    finally: srv.stop()
    srv = serve(d, '--host', '0.0.0.0', env=store_env(d, MLOPS_NB_LABELS_TOKEN='s3cret'))
    try:
        assert post_labels(srv, row)[0] == 401
        assert post_labels(srv, row, headers={'Authorization': 'Bearer wrong'})[0] == 401
        assert post_labels(srv, row, headers={'Authorization': 'Bearer s3cret'})[0] == 200
        st, _, body = http_call('POST', srv.base + '/labels', b'[{"request_id": "x", "row": -1, "label": 1}]', headers={'Authorization': 'Bearer s3cret'})
        assert st == 400 and b'Label 0: row must be' in body
    finally: srv.stop()


def champion_version(d: Path) -> str:
    r = mlops_nb('models', MODEL, '--json', cwd=d, env=store_env(d))
    return next(v['version'] for v in json.loads(r.stdout)['versions'] if 'champion' in v['aliases'])


def test_the_loop_retrains_on_a_quality_alert_only_when_the_labels_teach_something(scenario):
    d, *_ = scenario
    assert champion_version(d) == '1'
    srv = serve(d)
    try:
        t0 = now()
        noise = send(srv, shift_data(800, seed=10), 'noise')
        noise['label'] = noise['target'].sample(frac=1, random_state=0).to_numpy()  # labels that teach nothing
        assert post_labels(srv, noise)[0] == 200
        t1 = now()
        concept = send(srv, shift_data(800, shifted=True, shift=0.0, seed=9), 'rule')  # same inputs, a new rule (x0 - x1)
        assert post_labels(srv, concept.assign(label=concept['target']))[0] == 200
        t2 = now()
    finally: assert srv.terminate() == 0
    rc, doc, r = monitor(d, '--start', t0, '--end', t1)
    assert (rc, doc['trigger'], doc['action']) == (1, 'quality', 'refused'), r.stderr + json.dumps(doc, indent=1)
    assert doc['retrain_run_id'] and champion_version(d) == '1'
    rc, doc, r = monitor(d, '--start', t1, '--end', t2)
    assert (rc, doc['trigger'], doc['action']) == (0, 'quality', 'promoted'), r.stderr + json.dumps(doc, indent=1)
    assert doc['drift']['drifted'] is False and doc['labelled_rows'] == 800
    assert doc['quality']['realized']['accuracy']['value'] < 0.7  # the old rule is no better than a coin on the new one
    beat = {c['check']: c for c in doc['promotion']['gate']['checks']}['roc_auc > champion']
    assert beat['passed'] and beat['value'] > beat['bound'] + 0.2
    assert doc['new_version'] == champion_version(d) != '1'
