"""The prediction server over real HTTP: MLflow's formats against a real `mlflow models serve`, bad inputs,
/metrics, SIGTERM with requests in flight, the request log, hot swap under load, and a bounded load test."""
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_helpers import Proc, http, mlops_nb_exe, post_json, set_alias, store_env, train_and_register

MODEL = 'bc'


@pytest.fixture(scope='module')
def store(tmp_path_factory):
    "A store with model `bc` (version 1 champion) and `swap` (v1 champion, v2 a stronger forest) trained once."
    d = tmp_path_factory.mktemp('serve')
    train_and_register(d, MODEL, 30)
    train_and_register(d, 'swap', 5, alias='champion')
    train_and_register(d, 'swap', 40, seed=1, alias=None)
    return d


@pytest.fixture(scope='module')
def rows():
    from mlops_nb.data import load_dataset
    return load_dataset('breast_cancer').drop(columns='target').sample(100, random_state=1)


@pytest.fixture(scope='module')
def ours(store):
    p = Proc([mlops_nb_exe(), 'serve', f'models:/{MODEL}@champion', '--port', '{port}', '--log-dir', store / 'reqlog'],
             store, store_env(store))
    yield p
    p.stop()


@pytest.fixture(scope='module')
def mlflow_server(store):
    "MLflow's own scoring server on the same model, the reference for every answer."
    p = Proc([sys.executable, '-m', 'mlflow', 'models', 'serve', '-m', f'models:/{MODEL}@champion', '--env-manager', 'local',
              '-h', '127.0.0.1', '-p', '{port}'], store, store_env(store), ready_path='/ping')
    yield p
    p.stop()


def payloads(df):
    "Every request format of MLflow's scoring protocol, for the same rows."
    split = json.loads(df.to_json(orient='split', index=False))
    return {
        'dataframe_split': json.dumps({'dataframe_split': split}).encode(),
        'dataframe_records': json.dumps({'dataframe_records': df.to_dict('records')}).encode(),
        'instances': json.dumps({'instances': df.to_dict('records')}).encode(),
        'inputs': json.dumps({'inputs': df.to_dict('list')}).encode(),
        'params ignored': json.dumps({'dataframe_split': split, 'params': {'anything': 1}}).encode(),
        'csv': df.to_csv(index=False).encode(),
    }


@pytest.mark.parametrize('n', [1, 100])
def test_every_format_answers_as_mlflow_does(ours, mlflow_server, rows, n):
    for fmt, body in payloads(rows.head(n)).items():
        ctype = 'text/csv' if fmt == 'csv' else 'application/json'
        got = http('POST', ours.base + '/invocations', body, ctype)
        want = http('POST', mlflow_server.base + '/invocations', body, ctype)
        assert (got[0], want[0]) == (200, 200), (fmt, got[2][:300], want[2][:300])
        assert json.loads(got[2]) == json.loads(want[2]), fmt
        assert len(json.loads(got[2])['predictions']) == n


def test_probabilities_when_asked(ours, rows, store):
    from mlops_nb.tracking import load_model
    from mlops_nb.core import get_settings
    st, _, doc = post_json(ours.base, {'dataframe_split': json.loads(rows.to_json(orient='split', index=False)),
                                       'params': {'predict_method': 'predict_proba'}})
    assert st == 200 and doc['classes'] == [0, 1]
    want = load_model(f'models:/{MODEL}@champion', get_settings(cwd=store, env={})).predict_proba(rows)
    assert max(abs(a - b) for g, w in zip(doc['predictions'], want.tolist()) for a, b in zip(g, w)) < 1e-4


def test_bad_inputs_get_4xx_naming_the_problem(ours, rows):
    one = rows.head(2).to_dict('records')
    col = rows.columns[3]
    cases = {
        'missing column': ({'dataframe_records': [{k: v for k, v in r.items() if k != col} for r in one]}, 400, col, 0),
        'extra column': ({'dataframe_records': [{**one[0], 'surprise': 1.0}]}, 400, 'surprise', 0),
        'wrong type': ({'dataframe_records': [one[0], {**one[1], col: 'big'}]}, 400, col, 1),
        'null': ({'dataframe_records': [one[0], {**one[1], col: None}]}, 400, col, 1),
        'two formats': ({'dataframe_records': one, 'inputs': one}, 400, None, None),
    }
    for name, (doc, status, column, row) in cases.items():
        st, h, body = post_json(ours.base, doc)
        assert st == status, (name, body)
        assert body['error_code'] == 'BAD_REQUEST' and body['request_id'] == h['x-request-id'], (name, body)
        if column: assert (body['column'], body['row']) == (column, row), (name, body)
        if name == 'wrong type': assert body['expected'] == 'double' and "got string 'big'" in body['message']
    assert post_json(ours.base, b'{"inputs": [1, ')[0] == 400                                          # malformed JSON
    assert http('POST', ours.base + '/invocations', b'a,b\n1,"2', 'text/csv')[0] == 400              # malformed CSV
    assert http('POST', ours.base + '/invocations', b'{}', 'application/xml')[0] == 415              # content type
    big = json.dumps({'inputs': {c: [1.0] * 10_001 for c in rows.columns}}).encode()
    st, _, body = post_json(ours.base, big)
    assert st == 413 and 'limit is 10000' in body['message']                                          # too many rows
    assert post_json(ours.base, b'{"inputs": "' + b'x' * (11 * 2**20) + b'"}')[0] == 413              # body over the limit
    st, _, body = post_json(ours.base, {'dataframe_records': one})
    assert st == 200 and len(body['predictions']) == 2                                                # still serving


def test_metrics_version_and_docs(ours, rows):
    from prometheus_client.parser import text_string_to_metric_families
    for _ in range(3): post_json(ours.base, {'dataframe_records': rows.head(4).to_dict('records')})
    st, h, text = http('GET', ours.base + '/metrics')
    assert st == 200 and h['content-type'].startswith('text/plain')
    fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
    ok = [s for s in fams['mlops_nb_requests'].samples if s.name == 'mlops_nb_requests_total'
          and s.labels == {'route': '/invocations', 'method': 'POST', 'status': '200'}]
    assert ok and ok[0].value >= 3
    hist = [s for s in fams['mlops_nb_request_duration_seconds'].samples if s.name.endswith('_count') and s.labels['route'] == '/invocations']
    assert hist[0].value >= 3
    assert any(s.value >= 12 for s in fams['mlops_nb_predicted_rows'].samples if s.name == 'mlops_nb_predicted_rows_total')
    assert [s.name for s in fams['mlops_nb_batch_rows'].samples if s.name.endswith('_count')]
    assert 'mlops_nb_requests_in_flight' in fams
    info = [s for s in fams['mlops_nb_model_info'].samples if s.value == 1][0].labels
    assert (info['name'], info['version'], info['alias']) == (MODEL, '1', 'champion')
    v = json.loads(http('GET', ours.base + '/version')[2])
    assert (v['name'], v['version'], v['alias'], v['engine']) == (MODEL, '1', 'champion', info['engine'])
    assert v['run_id'] and v['package_version']
    assert rows.columns[0] in http('GET', ours.base + '/docs')[2].decode()
    assert http('GET', ours.base + '/ping')[0] == 200


def test_drift_gauges_from_the_monitor_file(ours, store):
    (store / 'reqlog' / 'drift').mkdir(parents=True, exist_ok=True)
    doc = {'ts': '2026-11-27T08:00:00Z', 'model_name': MODEL, 'model_version': '1', 'share_drifted': 0.25, 'drifted': True,
           'columns': {'mean radius': {'kind': 'numeric', 'stat': 'wasserstein', 'score': 0.31, 'threshold': 0.1, 'drifted': True}}}
    (store / 'reqlog' / 'drift' / 'latest.json.tmp').write_text(json.dumps(doc))
    os.replace(store / 'reqlog' / 'drift' / 'latest.json.tmp', store / 'reqlog' / 'drift' / 'latest.json')
    from prometheus_client.parser import text_string_to_metric_families
    fams = {f.name: f for f in text_string_to_metric_families(http('GET', ours.base + '/metrics')[2].decode())}
    assert [(s.labels, s.value) for s in fams['mlops_nb_drift_score'].samples] == [({'column': 'mean radius', 'stat': 'wasserstein'}, 0.31)]
    assert fams['mlops_nb_drift_detected'].samples[0].value == 1 and fams['mlops_nb_drift_share'].samples[0].value == 0.25
    assert fams['mlops_nb_drift_timestamp_seconds'].samples[0].value == 1795766400.0


def test_sigterm_lets_requests_in_flight_finish_and_flushes_the_log(store, rows):
    "16 large requests (scikit-learn engine, so each takes a while); SIGTERM once they are sent: all answer 200, the log has every row."
    from mlops_nb.reqlog import read_log
    log_dir = store / 'reqlog-sigterm'
    p = Proc([mlops_nb_exe(), 'serve', f'models:/{MODEL}@champion', '--port', '{port}', '--onnx', 'off', '--log-dir', log_dir,
              '--max-batch-rows', '2000'], store, store_env(store))
    big = json.dumps({'dataframe_records': rows.sample(2000, replace=True, random_state=0).to_dict('records')}).encode()
    sent = threading.Barrier(17)
    def call():
        sent.wait()
        return post_json(p.base, big)
    with ThreadPoolExecutor(16) as ex:
        futs = [ex.submit(call) for _ in range(16)]
        sent.wait(); time.sleep(0.5)  # let the requests reach the server
        rc = p.terminate()
        res = [f.result() for f in futs]
    assert [r[0] for r in res] == [200] * 16, [r[2] for r in res if r[0] != 200][:2]
    assert rc == 0, p.output()
    log = read_log(log_dir)
    assert len(log) == 16 * 2000
    assert set(log['_mlops_request_id']) == {r[1]['x-request-id'] for r in res}


def _hammer(base, body, stop, results):
    while not stop.is_set():
        try: results.append(http('POST', base + '/invocations', body, timeout=30)[0])
        except OSError as e: results.append(repr(e))


def test_hot_swap_under_load_fails_no_request(store, rows):
    from mlops_nb.reqlog import read_log
    log_dir = store / 'reqlog-swap'
    p = Proc([mlops_nb_exe(), 'serve', 'models:/swap@champion', '--port', '{port}', '--watch', '--watch-interval', '0.5',
              '--log-dir', log_dir], store, store_env(store))
    try:
        assert json.loads(http('GET', p.base + '/version')[2])['version'] == '1'
        body = json.dumps({'dataframe_records': rows.head(5).to_dict('records')}).encode()
        stop, results = threading.Event(), []
        threads = [threading.Thread(target=_hammer, args=(p.base, body, stop, results)) for _ in range(4)]
        for t in threads: t.start()
        set_alias(store, 'swap', 'champion', '2')
        deadline = time.monotonic() + 120
        while json.loads(http('GET', p.base + '/version')[2])['version'] != '2' and time.monotonic() < deadline: time.sleep(0.3)
        n_at_swap = len(results)
        while len(results) < n_at_swap + 20 and time.monotonic() < deadline: time.sleep(0.1)  # keep going on the new model
        stop.set()
        for t in threads: t.join()
        assert json.loads(http('GET', p.base + '/version')[2])['version'] == '2', p.output()
        assert results and set(results) == {200}, [r for r in results if r != 200][:3]
        assert 'serving swap version 2' in p.output()
    finally:
        assert p.terminate() == 0
    assert set(read_log(log_dir)['_mlops_model_version']) == {'1', '2'}


def test_bounded_load_no_errors_memory_flat(store, rows):
    """Loopback load for MLOPS_NB_LOAD_SECONDS (default 10 s here; the full run is 60 s:
    MLOPS_NB_LOAD_SECONDS=60 pytest tests/test_serve.py -k bounded_load): no errors, resident memory flat."""
    psutil = pytest.importorskip('psutil')
    seconds = float(os.environ.get('MLOPS_NB_LOAD_SECONDS', '10'))
    p = Proc([mlops_nb_exe(), 'serve', f'models:/{MODEL}@champion', '--port', '{port}', '--log-dir', store / 'reqlog-load',
              '--log-flush-seconds', '2'], store, store_env(store))  # the log's queue holds at most 2 s of rows
    try:
        bodies = [json.dumps({'dataframe_records': rows.head(n).to_dict('records')}).encode() for n in (1, 100)]
        proc = psutil.Process(p.p.pid)
        stop, results, rss = threading.Event(), [], []
        threads = [threading.Thread(target=_hammer, args=(p.base, bodies[i % 2], stop, results)) for i in range(8)]
        for t in threads: t.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(seconds / 20); rss.append(proc.memory_info().rss)
        stop.set()
        for t in threads: t.join()
        assert results and set(results) == {200}, [r for r in results if r != 200][:3]
        warm, end = max(rss[4:8]), max(rss[-4:])  # after the first parts are written (the queue is at its size), and at the end
        assert end - warm < 64 * 2**20, f'resident memory grew {(end - warm) / 2**20:.0f} MiB under load: {[r // 2**20 for r in rss]}'
    finally:
        assert p.terminate() == 0


def test_workers_share_one_metrics_view(store, rows):
    """With --workers 2 every request is answered (a worker accepts only once its model is loaded), and /metrics
    (answered by either worker) counts the requests of both."""
    from prometheus_client.parser import text_string_to_metric_families
    p = Proc([mlops_nb_exe(), 'serve', f'models:/{MODEL}@champion', '--port', '{port}', '--workers', '2'], store, store_env(store))
    try:
        body = {'dataframe_records': rows.head(3).to_dict('records')}
        with ThreadPoolExecutor(4) as ex:
            assert [r[0] for r in ex.map(lambda _: post_json(p.base, body), range(20))] == [200] * 20
        fams = {f.name: f for f in text_string_to_metric_families(http('GET', p.base + '/metrics')[2].decode())}
        ok = sum(s.value for s in fams['mlops_nb_requests'].samples if s.name == 'mlops_nb_requests_total'
                 and s.labels.get('route') == '/invocations' and s.labels.get('status') == '200')
        assert ok == 20
        assert sum(s.value for s in fams['mlops_nb_predicted_rows'].samples if s.name == 'mlops_nb_predicted_rows_total') == 60
    finally:
        assert p.terminate() == 0, p.output()


# Safe rollouts: --shadow, --canary and the canary's fallback to the primary

RAISER = '''import mlflow
class Raiser(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None): raise RuntimeError('the canary is broken')
mlflow.models.set_model(Raiser())
'''


@pytest.fixture(scope='module')
def raiser(store, rows):
    "A plain-MLflow PythonModel (models from code) whose predict raises, registered as `raiser` version 1."
    from mlops_nb.core import get_settings
    from mlops_nb.registry import register_run_model
    from mlops_nb.tracking import log_model, start_run
    s = get_settings(cwd=store, env={})
    f = store / 'raiser_model.py'
    f.write_text(RAISER)
    with start_run(settings=s, params={}, tags={'mlops_nb.job': 'train'}) as run:
        log_model(str(f), rows.head(3))  # its input columns come from schema.json: MLflow cannot infer a signature from a model that raises
    return str(register_run_model('raiser', run.run_id, s, alias=None).version)


def _local(store, uri):
    from mlops_nb.core import get_settings
    from mlops_nb.tracking import load_model
    return load_model(uri, get_settings(cwd=store, env={}))


def _families(base):
    from prometheus_client.parser import text_string_to_metric_families
    return {f.name: f for f in text_string_to_metric_families(http('GET', base + '/metrics')[2].decode())}


def _sample(fams, family, name, **labels):
    return sum(s.value for s in fams[family].samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_shadow_answers_stay_the_primarys_and_the_log_keeps_both(store, rows):
    from mlops_nb.reqlog import read_log
    log_dir = store / 'reqlog-shadow'
    p = Proc([mlops_nb_exe(), 'serve', 'models:/swap/1', '--shadow', 'models:/swap/2', '--port', '{port}', '--log-dir', log_dir],
             store, store_env(store))
    primary, shadow = _local(store, 'models:/swap/1'), _local(store, 'models:/swap/2')
    want = {}
    try:
        for i in range(20):
            part = rows.iloc[5 * i:5 * i + 5]
            st, h, doc = post_json(p.base, {'dataframe_records': part.to_dict('records')}, headers={'X-Request-Id': f'shadow-{i}'})
            assert st == 200 and h['x-model-version'] == '1'
            assert doc['predictions'] == primary.predict(part).tolist()  # every answer is the primary's
            want[f'shadow-{i}'] = (primary.predict(part).tolist(), shadow.predict(part).tolist())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the shadow scores off the response path: wait until it has seen every row
            fams = _families(p.base)
            agree, disagree = (_sample(fams, 'mlops_nb_shadow_rows', 'mlops_nb_shadow_rows_total', agreement=a) for a in ('agree', 'disagree'))
            if agree + disagree == 100: break
            time.sleep(0.2)
        assert agree + disagree == 100, p.output()
        n_agree = sum(a == b for pr, sh in want.values() for a, b in zip(pr, sh))
        assert agree == n_agree and _sample(fams, 'mlops_nb_shadow_agreement', 'mlops_nb_shadow_agreement') == pytest.approx(n_agree / 100)
        assert _sample(fams, 'mlops_nb_shadow_requests', 'mlops_nb_shadow_requests_total', outcome='scored') == 20
        assert _sample(fams, 'mlops_nb_model_requests', 'mlops_nb_model_requests_total', version='2', role='shadow', outcome='ok') == 20
        health = json.loads(http('GET', p.base + '/health')[2])
        assert health['shadow']['version'] == '2' and health['shadow']['rows_scored'] == 100
    finally:
        assert p.terminate() == 0, p.output()
    log = read_log(log_dir)
    assert len(log) == 100 and set(log['_mlops_model_version']) == {'1'} and set(log['_mlops_shadow_version']) == {'2'}
    for rid, g in log.groupby('_mlops_request_id'):
        assert (g['prediction'].tolist(), g['_mlops_shadow_prediction'].astype(int).tolist()) == want[rid]


def test_canary_answers_its_share_and_each_caller_sees_one_version(store, rows):
    p = Proc([mlops_nb_exe(), 'serve', 'models:/swap/1', '--canary', 'models:/swap/2', '--canary-share', '0.25', '--port', '{port}',
              '--no-log'], store, store_env(store))
    primary, canary = _local(store, 'models:/swap/1'), _local(store, 'models:/swap/2')
    try:
        got = {}
        for i in range(200):
            row = rows.iloc[[i % len(rows)]]
            st, h, doc = post_json(p.base, {'dataframe_records': row.to_dict('records')}, headers={'X-Client-Key': f'client-{i}'})
            assert st == 200
            got[f'client-{i}'] = h['x-model-version']
            assert doc['predictions'] == (canary if h['x-model-version'] == '2' else primary).predict(row).tolist()
        share = sum(v == '2' for v in got.values()) / 200
        assert 0.12 <= share <= 0.40, share
        for key in [k for k, v in got.items() if v == '2'][:3] + [k for k, v in got.items() if v == '1'][:3]:
            assert {post_json(p.base, {'dataframe_records': rows.head(1).to_dict('records')}, headers={'X-Client-Key': key})[1]['x-model-version']
                    for _ in range(5)} == {got[key]}  # sticky: one caller, one version
        fams = _families(p.base)
        assert _sample(fams, 'mlops_nb_model_requests', 'mlops_nb_model_requests_total', version='2', role='canary', outcome='ok') == share * 200 + 15
        assert _sample(fams, 'mlops_nb_model_requests', 'mlops_nb_model_requests_total', version='1', role='primary', outcome='ok') == (1 - share) * 200 + 15
        assert _sample(fams, 'mlops_nb_model_request_duration_seconds', 'mlops_nb_model_request_duration_seconds_count', role='canary') == share * 200 + 15
        assert json.loads(http('GET', p.base + '/health')[2])['canary']['active'] is True
    finally:
        assert p.terminate() == 0, p.output()


def test_a_canary_that_raises_is_answered_by_the_primary_then_dropped(store, rows, raiser):
    p = Proc([mlops_nb_exe(), 'serve', 'models:/swap/1', '--canary', f'models:/raiser/{raiser}', '--canary-share', '0.5',
              '--canary-min-requests', '10', '--port', '{port}', '--no-log'], store, store_env(store))
    primary = _local(store, 'models:/swap/1')
    try:
        res = [post_json(p.base, {'dataframe_records': rows.iloc[[i]].to_dict('records')}, headers={'X-Client-Key': f'caller-{i}'})
               for i in range(100)]
        assert [r[0] for r in res] == [200] * 100  # 0 client errors
        assert [r[2]['predictions'] for r in res] == [primary.predict(rows.iloc[[i]]).tolist() for i in range(100)]
        assert {r[1]['x-model-version'] for r in res} == {'1'}
        fams = _families(p.base)
        assert _sample(fams, 'mlops_nb_canary_dropped', 'mlops_nb_canary_dropped_total') == 1
        assert _sample(fams, 'mlops_nb_canary_fallbacks', 'mlops_nb_canary_fallbacks_total', reason='error') == 10  # dropped at the 10th
        assert _sample(fams, 'mlops_nb_rollout_model', 'mlops_nb_rollout_model', role='canary') == 0
        health = json.loads(http('GET', p.base + '/health')[2])
        assert health['status'] == 'ok' and health['canary']['active'] is False and 'error rate 100%' in health['canary']['dropped']['reason']
        assert 'dropped' in p.output() and 'the canary is broken' in p.output()
    finally:
        assert p.terminate() == 0, p.output()


def test_hot_swap_under_load_with_a_broken_shadow_fails_no_request(store, rows, raiser):
    "--watch keeps working beside --shadow; a shadow that raises costs the clients nothing, and its errors are counted."
    from mlops_nb.reqlog import read_log
    set_alias(store, 'swap', 'champion', '1')
    log_dir = store / 'reqlog-swap-shadow'
    p = Proc([mlops_nb_exe(), 'serve', 'models:/swap@champion', '--shadow', f'models:/raiser/{raiser}', '--port', '{port}', '--watch',
              '--watch-interval', '0.5', '--log-dir', log_dir], store, store_env(store))
    try:
        body = json.dumps({'dataframe_records': rows.head(5).to_dict('records')}).encode()
        stop, results = threading.Event(), []
        threads = [threading.Thread(target=_hammer, args=(p.base, body, stop, results)) for _ in range(4)]
        for t in threads: t.start()
        set_alias(store, 'swap', 'champion', '2')
        deadline = time.monotonic() + 120
        while json.loads(http('GET', p.base + '/version')[2])['version'] != '2' and time.monotonic() < deadline: time.sleep(0.3)
        n_at_swap = len(results)
        while len(results) < n_at_swap + 20 and time.monotonic() < deadline: time.sleep(0.1)
        stop.set()
        for t in threads: t.join()
        assert results and set(results) == {200}, [r for r in results if r != 200][:3]
        fams = _families(p.base)
        assert _sample(fams, 'mlops_nb_shadow_requests', 'mlops_nb_shadow_requests_total', outcome='error') > 0
        assert _sample(fams, 'mlops_nb_shadow_rows', 'mlops_nb_shadow_rows_total') == 0
    finally:
        assert p.terminate() == 0, p.output()
    log = read_log(log_dir)
    assert len(log) == 5 * len(results) and set(log['_mlops_model_version']) == {'1', '2'}
    assert log['_mlops_shadow_prediction'].isna().all() and set(log['_mlops_shadow_version']) == {raiser}


def test_rollout_flags_that_cannot_work_exit_2_naming_the_flag(store):
    import subprocess
    for args, flag in ((['--canary', 'models:/swap/2', '--canary-share', '1.5'], '--canary-share 1.5'),
                       (['--shadow', 'models:/swap/2', '--shadow-queue', '0'], '--shadow-queue 0'),
                       (['--canary', 'models:/swap/2', '--shadow', 'models:/swap/2'], 'same model')):
        r = subprocess.run([mlops_nb_exe(), 'serve', 'models:/swap/1', '--no-log', *args], cwd=store, env=store_env(store),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and flag in r.stderr, (args, r.stderr[-500:])
