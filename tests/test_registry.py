"""Promotion through gates, champion aliases, rollback and `mlops-nb models`, driven through the real CLI."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import clean_env, mlops_nb

GATE = "checks:\n  - roc_auc >= 0.8\n  - roc_auc >= champion - 0.005\n"


def _client(d):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")


def _promote(d, name, run_id, gate=GATE):
    "Promote in-process (setup for tests about something else)."
    import yaml

    from mlops_nb.core import get_settings
    from mlops_nb.evaluate import Gate
    from mlops_nb.registry import promote
    return promote(name, run_id, settings=get_settings(cwd=d, env={}), gate=Gate.parse(yaml.safe_load(gate)) if gate else None)


def _train_run(d, model='random_forest', seed=0, **params):
    "A run shaped like the train job's (params, job tag, schema.json, fingerprint, metrics, model), made in-process."
    from mlops_nb.core import get_settings
    from mlops_nb.data import infer_schema, load_dataset, split
    from mlops_nb.evaluate import evaluate
    from mlops_nb.tracking import log_dataset, log_model, record, start_run
    from mlops_nb.train import fit
    s = get_settings(cwd=d, env={})
    p = dict(dataset='breast_cancer', target='target', model=model, n_estimators=params.get('n_estimators', 100),
             max_depth=params.get('max_depth'), test_size=0.2, seed=seed)
    tr, te = split(load_dataset('breast_cancer'), test_size=0.2, seed=seed, stratify='target')
    schema = infer_schema(tr, target='target')
    with start_run(settings=s, params=p, seed=seed, tags={'mlops_nb.job': 'train'}) as run:
        log_dataset(tr, 'train', source='breast_cancer')
        f = Path(tempfile.mkdtemp()) / 'schema.json'
        schema.save(f); record('schema.json', f)
        m = fit(tr, schema, model, seed=seed, **params)
        for k, v in evaluate(m, te.drop(columns='target'), te['target']).items(): record(k, v)
        log_model(m, tr.drop(columns='target').head())
    return run.run_id


@pytest.fixture(scope='module')
def fast(tmp_path_factory):
    "A store with train-like runs of a weak, a strong and a logistic model."
    d = tmp_path_factory.mktemp('reg')
    (d / 'gate.yaml').write_text(GATE)
    runs = dict(weak=_train_run(d, n_estimators=1, max_depth=1), strong=_train_run(d, n_estimators=50),
                logistic=_train_run(d, 'logistic'))
    return d, runs


def test_real_train_jobs_worse_model_refused(tmp_path):
    "Two real train jobs; the stump forest is refused under a relative gate and the champion stays."
    d = tmp_path
    (d / 'gate.yaml').write_text(GATE)
    _client(d).search_experiments()  # create the store first: two processes both creating a fresh SQLite store can collide
    exe = Path(sys.executable).parent / 'mlops-nb'
    jobs = [subprocess.Popen([str(exe), 'run', 'train', *ps, '--json'], cwd=d, env=clean_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for ps in (['-p', 'n_estimators', '50'], ['-p', 'n_estimators', '1', '-p', 'max_depth', '1'])]
    outs = [j.communicate(timeout=300) for j in jobs]
    assert [j.returncode for j in jobs] == [0, 0], outs
    good, bad = (json.loads(o)['run_id'] for o, _ in outs)

    first = mlops_nb('promote', 'bc', '--run', good, '--gate', 'gate.yaml', '--reason', 'first model', cwd=d)
    assert first.returncode == 0, first.stdout + first.stderr
    assert 'no champion' in first.stdout and "version 1 of 'bc' is now 'champion'" in first.stdout

    worse = mlops_nb('promote', 'bc', '--run', bad, '--gate', 'gate.yaml', cwd=d)
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert 'FAIL' in worse.stdout and "stays on version 1" in worse.stdout
    c = _client(d)
    assert c.get_model_version_by_alias('bc', 'champion').run_id == good
    gate = json.loads(Path(c.download_artifacts(bad, 'gate.json', str(d))).read_text())
    rel = next(r for r in gate['checks'] if r['check'] == 'roc_auc >= champion - 0.005')
    assert gate['passed'] is False and rel['passed'] is False and rel['value'] < rel['bound']
    assert gate['champion_version'] == '1'
    assert c.get_run(bad).data.tags['mlops_nb.gate_passed'] == 'false'
    v1 = c.get_model_version('bc', '1')
    assert v1.tags['mlops_nb.promotion_reason'] == 'first model' and v1.tags['mlops_nb.run_id'] == good
    assert v1.tags['mlops_nb.data_fingerprint'] == c.get_run(good).data.tags['mlops_nb.data_fingerprint']
    card = Path(c.download_artifacts(good, 'model_card.md', str(d))).read_text()
    assert v1.tags['mlops_nb.model_card'] == f'runs:/{good}/model_card.md' and '## Intended use' in card
    # the champion's run reproduces: the gate.* metrics promote logged on it are not the job's to reproduce
    rep = mlops_nb('reproduce', good, '--json', cwd=d)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    rep = json.loads(rep.stdout)
    assert rep['identical'] and not any(k.startswith('gate.') for k in rep['metrics']), rep['metrics']


def test_better_model_promoted_then_rolled_back(fast):
    d, runs = fast
    _promote(d, 'm1', runs['weak'])
    better = mlops_nb('promote', 'm1', '--run', runs['strong'], '--gate', 'gate.yaml', '--reason', 'more trees', cwd=d)
    assert better.returncode == 0, better.stdout + better.stderr
    assert 'against champion version 1' in better.stdout and "is now 'champion' (was version 1)" in better.stdout
    c = _client(d)
    champ = c.get_model_version_by_alias('m1', 'champion')
    assert champ.run_id == runs['strong']
    assert champ.tags['mlops_nb.previous_champion'] == '1' and champ.tags['mlops_nb.promotion_reason'] == 'more trees'
    assert champ.tags['mlops_nb.promoted_by'] and champ.tags['mlops_nb.promoted_at']
    assert json.loads(c.get_registered_model('m1').tags['mlops_nb.alias_history.champion']) == ['1', '2']

    back = mlops_nb('rollback', 'm1', cwd=d)
    assert back.returncode == 0 and 'from version 2 to version 1' in back.stdout, back.stdout + back.stderr
    assert c.get_model_version_by_alias('m1', 'champion').run_id == runs['weak']
    assert json.loads(c.get_registered_model('m1').tags['mlops_nb.alias_history.champion']) == ['1']
    assert 'mlops_nb.rolled_back_at' in c.get_model_version('m1', '2').tags

    again = mlops_nb('rollback', 'm1', cwd=d)
    assert again.returncode == 2 and 'there is no previous one' in again.stderr, again.stdout + again.stderr
    assert c.get_model_version_by_alias('m1', 'champion').version in ('1', 1)


def test_racing_promotions_keep_a_consistent_champion(fast):
    "Three promotions started together: both good ones land in history in some order, the bad one never holds the alias."
    d, runs = fast
    _promote(d, 'race', runs['logistic'])
    extra = {'strong2': _train_run(d, n_estimators=50, seed=0), 'weak2': _train_run(d, n_estimators=1, max_depth=1)}
    (d / 'race.yaml').write_text("checks:\n  - roc_auc >= 0.95\n  - roc_auc >= champion - 0.05\n")
    exe = Path(sys.executable).parent / 'mlops-nb'
    cands = [runs['strong'], extra['strong2'], extra['weak2']]
    procs = [subprocess.Popen([str(exe), 'promote', 'race', '--run', r, '--gate', 'race.yaml', '--json'], cwd=d,
                              env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in cands]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0, 1], outs
    res = [json.loads(o) for o, _ in outs]
    c = _client(d)
    hist = json.loads(c.get_registered_model('race').tags['mlops_nb.alias_history.champion'])
    good = {res[0]['version'], res[1]['version']}
    assert hist[0] == '1' and set(hist[1:]) == good and len(hist) == 3  # no promotion lost
    assert str(c.get_model_version_by_alias('race', 'champion').version) == hist[-1]
    assert res[2]['version'] not in hist and res[2]['gate']['passed'] is False
    # serialised: the later promotion was gated against, and replaced, the earlier one
    later = c.get_model_version('race', hist[2])
    assert later.tags['mlops_nb.previous_champion'] == hist[1]
    assert json.loads(Path(c.download_artifacts(later.run_id, 'gate.json', str(d / 'g'))).read_text())['champion_version'] == hist[1]


def test_models_lists_versions_as_json(fast):
    d, runs = fast
    _promote(d, 'm2', runs['strong'], gate=None)  # the default gate
    out = mlops_nb('models', 'm2', '--json', cwd=d)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    (v,) = doc['versions']
    assert v['aliases'] == ['champion'] and v['run_id'] == runs['strong']
    assert v['metrics']['roc_auc'] > 0.95
    assert {'git_sha', 'data_fingerprint', 'promoted_by', 'model_card'} <= set(v['tags'])
    allm = json.loads(mlops_nb('models', '--json', cwd=d).stdout)['models']
    assert {'name': 'm2', 'versions': 1, 'latest_version': 1, 'aliases': {'champion': '1'}} in allm
    text = mlops_nb('models', 'm2', cwd=d).stdout
    assert 'champion' in text and 'roc_auc=' in text


def test_champion_loads_with_plain_mlflow(fast):
    d, runs = fast
    _promote(d, 'm3', runs['logistic'])
    import mlflow

    from mlops_nb.data import load_dataset
    mlflow.set_tracking_uri(f"sqlite:///{d / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model('models:/m3@champion')
        X = load_dataset('breast_cancer').drop(columns='target').head(4)
        assert len(model.predict(X)) == 4
    finally:
        mlflow.set_tracking_uri(None)


def test_missing_things_are_named_with_what_exists(fast):
    d, runs = fast
    _promote(d, 'm4', runs['strong'])
    r = mlops_nb('models', 'nope', cwd=d)
    assert r.returncode == 2 and "Registered model 'nope' does not exist" in r.stderr and 'm4' in r.stderr
    r = mlops_nb('promote', 'm4', '--run', 'deadbeef', cwd=d)
    assert r.returncode == 2 and "Run 'deadbeef' does not exist" in r.stderr and runs['strong'] in r.stderr
    r = mlops_nb('rollback', 'm4', '--alias', 'challenger', cwd=d)
    assert r.returncode == 2 and "no alias 'challenger'" in r.stderr and 'champion (version 1)' in r.stderr


def test_unsafe_gate_is_refused_before_anything_moves(fast):
    d, runs = fast
    (d / 'evil.yaml').write_text("checks:\n  - \"roc_auc >= __import__('os').getpid()\"\n")
    r = mlops_nb('promote', 'm5', '--run', runs['strong'], '--gate', 'evil.yaml', cwd=d)
    assert r.returncode == 2 and 'Call is not allowed' in r.stderr, r.stdout + r.stderr
    from mlflow.exceptions import MlflowException
    with pytest.raises(MlflowException):
        _client(d).get_model_version_by_alias('m5', 'champion')


def test_unreadable_champion_schema_fails_the_data_check(tmp_path):
    "A champion whose schema.json is corrupt or gone cannot be re-scored on the same rows: the gate fails, saying why."
    from urllib.parse import unquote, urlparse
    d = tmp_path
    (d / 'gate.yaml').write_text(GATE)
    champion, candidate = _train_run(d, n_estimators=20), _train_run(d, 'logistic')
    _promote(d, 'bc', champion)
    art = Path(unquote(urlparse(_client(d).get_run(champion).info.artifact_uri).path)) / 'schema.json'
    assert art.is_file()
    art.write_text('{"columns": [')  # corrupt
    r = mlops_nb('promote', 'bc', '--run', candidate, '--gate', 'gate.yaml', '--json', cwd=d)
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    rows = {row['check']: row for row in out['gate']['checks']}
    row = rows['data matches champion v1 schema']
    assert row['passed'] is False and row['value'] == 'unreadable', row
    assert row['note'].startswith("champion's schema.json: ") and 'Cannot read schema' in row['note'], row['note']
    assert '\n' not in row['note']  # one line: it is a cell of the printed table
    assert rows['data matches candidate schema']['passed'] is True  # the candidate's own data is fine
    assert out['moved'] is False and out['previous'] == '1'
    art.unlink()  # gone
    r = mlops_nb('promote', 'bc', '--run', candidate, '--gate', 'gate.yaml', cwd=d)
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(l for l in r.stdout.splitlines() if 'data matches champion v1 schema' in l)
    assert 'FAIL' in line and "champion's schema.json" in line and "has no artifact 'schema.json'" in line, r.stdout
    assert 'stays on version 1' in r.stdout + r.stderr
    assert str(_client(d).get_model_version_by_alias('bc', 'champion').version) == '1'
