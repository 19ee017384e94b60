"""`mlops-nb pipeline` from the outside: a fan-out pipeline end to end (local and on a Dask LocalCluster), invalid
files refused before anything starts, a failing middle step, resume, a fully cached rerun, an edited notebook."""
import json
import xml.dom.minidom
from pathlib import Path

import nbformat
import pytest

from conftest import mlops_nb
from mlops_nb.pipelines import PipelineError, check_pipeline, load_pipeline

TAG = 'mlops_nb.'


def write_nb(path: Path, params: str, *cells: str) -> Path:
    "A job notebook: a `parameters` cell, then `cells`."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={'tags': ['parameters']}),
                                         *map(nbformat.v4.new_code_cell, cells)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, str(path))
    return path


def client(d: Path):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")


def all_runs(d: Path) -> list:
    c = client(d)
    exp = c.get_experiment_by_name('mlops_nb')
    return [] if exp is None else c.search_runs([exp.experiment_id], max_results=1000)


def run_json(d: Path, *args):
    "`mlops-nb pipeline run ... --json`: (exit code, the result document or None, the process)."
    p = mlops_nb('pipeline', 'run', *args, '--json', cwd=d)
    try: doc = json.loads(p.stdout)
    except ValueError: doc = None
    return p.returncode, doc, p


# The fan-out pipeline: prepare a data file, train the bundled job over a 3-value grid, evaluate the best, promote it.
FANOUT = """\
name: fanout
params: {rows: 300}
steps:
  prepare:
    notebook: prepare.ipynb
    parameters: {rows: "${params.rows}"}
  train:
    notebook: train
    parameters: {dataset: "${prepare.artifacts.data.csv}", model: random_forest}
    grid: {n_estimators: [5, 10, 20]}
    metric: roc_auc
  evaluate:
    notebook: evaluate
    parameters: {train_run_id: "${train.best.run_id}"}
  promote:
    needs: [evaluate]
    promote: {model: tiny, candidate: "${train.best.run_id}", gate: gate.yaml}
"""


def fanout_dir(d: Path) -> Path:
    write_nb(d / 'prepare.ipynb', 'rows: int = 300  # rows to sample\nseed: int = 0  # sampling seed',
             'import mlops_nb\nfrom mlops_nb.data import load_dataset\n'
             'load_dataset("breast_cancer").sample(rows, random_state=seed).to_csv("data.csv", index=False)\n'
             'mlops_nb.record("data.csv", "data.csv"); mlops_nb.record("rows", rows)')
    (d / 'gate.yaml').write_text('checks:\n  - roc_auc >= 0.5\n')
    (d / 'pipeline.yaml').write_text(FANOUT)
    return d


def check_fanout(d: Path, doc: dict):
    "The fan-out run is complete and wired: child runs with upstream/downstream tags, the best job evaluated and promoted."
    c = client(d)
    pid = doc['run_id']
    assert doc['status'] == 'FINISHED' and [s['state'] for s in doc['steps'].values()] == ['finished'] * 4, doc
    parent = c.get_run(pid)
    assert parent.info.status == 'FINISHED' and parent.data.tags[f'{TAG}pipeline'] == 'fanout'
    steps = {r.data.tags[f'{TAG}pipeline_step']: r for r in all_runs(d) if r.data.tags.get(f'{TAG}pipeline_id') == pid}
    assert set(steps) == {'prepare', 'train', 'evaluate', 'promote'}
    assert all(r.data.tags['mlflow.parentRunId'] == pid for r in steps.values())  # nested under the pipeline's run
    ev = steps['evaluate'].data.tags
    assert (ev[f'{TAG}pipeline_upstream'], ev[f'{TAG}pipeline_downstream']) == ('train', 'promote')
    assert steps['prepare'].data.tags[f'{TAG}pipeline_downstream'] == 'train'
    grid = [r for r in all_runs(d) if r.data.tags.get('mlflow.parentRunId') == steps['train'].info.run_id]
    assert sorted(int(r.data.params['n_estimators']) for r in grid) == [5, 10, 20]
    assert all(r.info.status == 'FINISHED' for r in grid)
    best = doc['steps']['train']['best_run_id']
    top = max(r.data.metrics['roc_auc'] for r in grid)
    assert best in {r.info.run_id for r in grid} and c.get_run(best).data.metrics['roc_auc'] == top  # ${train.best...}
    assert steps['evaluate'].data.params['train_run_id'] == best  # ${train.best.run_id}
    assert Path(grid[0].data.params['dataset']).name == 'data.csv'  # ${prepare.artifacts.data.csv}: a local copy
    champ = c.get_model_version_by_alias('tiny', 'champion')
    assert champ.run_id == best
    svg = Path(c.download_artifacts(pid, 'pipeline.svg', str(d))).read_text()
    xml.dom.minidom.parseString(svg)
    assert svg.count('<g class="step"') == 4 and '#8fd18f' in svg  # four boxes, coloured finished


@pytest.fixture(scope='module')
def fanout(tmp_path_factory):
    "The fan-out pipeline run twice in one directory: the first run, then a fully cached one."
    d = fanout_dir(tmp_path_factory.mktemp('fanout'))
    first = run_json(d, 'pipeline.yaml')
    n = len(all_runs(d))
    second = run_json(d, 'pipeline.yaml')
    return d, first, second, n


def test_fanout_pipeline_end_to_end(fanout):
    d, (rc, doc, p), _, _ = fanout
    assert rc == 0, p.stdout + p.stderr
    check_fanout(d, doc)


def test_second_run_is_fully_cached(fanout):
    d, (_, first, _), (rc, doc, p), n = fanout
    assert rc == 0, p.stdout + p.stderr
    assert [s['state'] for s in doc['steps'].values()] == ['reused'] * 4
    assert {k: s['run_id'] for k, s in doc['steps'].items()} == {k: s['run_id'] for k, s in first['steps'].items()}
    assert len(all_runs(d)) == n + 1  # only the new parent run; no job ran
    assert doc['run_id'] != first['run_id']


def test_show_prints_the_dag_with_last_states(fanout):
    d = fanout[0]
    p = mlops_nb('pipeline', 'show', 'pipeline.yaml', cwd=d)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert 'last run: ' + fanout[2][1]['run_id'] in p.stdout
    step = {l.split()[0]: l for l in lines if l.startswith('  ')}
    assert list(step) == ['prepare', 'train', 'evaluate', 'promote'] and all(' reused ' in l for l in step.values())
    assert 'train.ipynb (grid)' in step['train'] and '<- train' in step['evaluate'] and 'promote tiny' in step['promote']


def test_fanout_on_a_dask_local_cluster(tmp_path):
    pytest.importorskip('distributed')
    d = fanout_dir(tmp_path)
    rc, doc, p = run_json(d, 'pipeline.yaml', '--executor', 'dask', '--workers', '2')
    assert rc == 0, p.stdout + p.stderr
    check_fanout(d, doc)
    for r in all_runs(d):  # every job ran on a worker of the cluster
        if r.data.tags.get(f'{TAG}job') in ('prepare', 'train', 'evaluate'):
            assert r.data.tags[f'{TAG}worker'].startswith('tcp://'), r.data.tags


# Invalid files: each refused with exit 2 naming the step, before any run exists.

@pytest.fixture
def small(tmp_path):
    write_nb(tmp_path / 'a.ipynb', 'n: int = 2  # a number', 'import mlops_nb\nmlops_nb.record("n", n)')
    write_nb(tmp_path / 'b.ipynb', 'x: float = 0.0  # from a\nflag: str = ""  # a file that makes the step fail',
             'import os, mlops_nb\nif flag and os.path.exists(flag): raise RuntimeError("the flag is up")\n'
             'mlops_nb.record("y", x * 2)')
    write_nb(tmp_path / 'c.ipynb', 'y: float = 0.0  # from b', 'import mlops_nb\nmlops_nb.record("z", y + 1)')
    write_nb(tmp_path / 'd.ipynb', 'n: int = 0  # from a', 'import mlops_nb\nmlops_nb.record("w", n * 10)')
    (tmp_path / 'gate.yaml').write_text('checks:\n  - roc_auc >= 0.5\n')
    (tmp_path / 'pipeline.yaml').write_text(SMALL)
    return tmp_path


SMALL = """\
name: small
steps:
  a: {notebook: a.ipynb}
  b:
    notebook: b.ipynb
    parameters: {x: "${a.metrics.n}", flag: stop.txt}
  c:
    notebook: c.ipynb
    parameters: {y: "${b.metrics.y}"}
  d:
    notebook: d.ipynb
    parameters: {n: "${a.metrics.n}"}
"""

INVALID = [  # (what changes in SMALL, the step named, words of the message)
    (('  a: {notebook: a.ipynb}', '  a: {notebook: a.ipynb, needs: [c]}'), 'a', 'a -> c -> b -> a form a cycle'),
    (('  a: {notebook: a.ipynb}', '  a: {notebook: a.ipynb, needs: [zz]}'), 'a', "needs unknown step 'zz'"),
    (('${b.metrics.y}', '${bb.metrics.y}'), 'c', "needs unknown step 'bb'"),
    (('${b.metrics.y}', '${b.metric.y}'), 'c', 'refers to nothing a step produces'),
    (('${b.metrics.y}', '${b.best.run_id}'), 'c', 'has no best job'),
    (('${b.metrics.y}', '${params.y}'), 'c', 'names no value of `params:`'),
    (('{y: ', '{yy: '), 'c', "Unknown parameter 'yy'"),
    (('flag: stop.txt', 'flag: stop.txt, x: many'), 'b', "x"),
    (('notebook: c.ipynb', 'notebook: gone.ipynb'), 'c', 'does not exist'),
    (('  a: {notebook: a.ipynb}', '  a: {notebook: a.ipynb, inputs: [missing.csv]}'), 'a', 'input file'),
    (('  a: {notebook: a.ipynb}', '  a: {notebook: a.ipynb, colour: red}'), 'a', 'unknown key(s) colour'),
]


def _invalid(d: Path, change) -> Path:
    old, new = change
    text = SMALL.replace(old, new)
    assert text != SMALL
    (d / 'bad.yaml').write_text(text)
    return d / 'bad.yaml'


@pytest.mark.parametrize('change,step,words', INVALID, ids=[w for _, _, w in INVALID])
def test_invalid_file_is_refused_naming_the_step(small, change, step, words):
    with pytest.raises(PipelineError) as e:
        check_pipeline(load_pipeline(_invalid(small, change)))
    assert e.value.step == step and f"Step {step!r}" in str(e.value) or 'cycle' in str(e.value), str(e.value)
    assert words in str(e.value), str(e.value)


def test_invalid_promote_gate_is_refused(small):
    (small / 'bad.yaml').write_text(SMALL + "  ship:\n    promote: {model: m, candidate: '${a.run_id}', gate: nogate.yaml}\n")
    with pytest.raises(PipelineError, match="Step 'ship' .*gate file .*nogate.yaml does not exist"):
        check_pipeline(load_pipeline(small / 'bad.yaml'))


@pytest.mark.parametrize('change', [INVALID[0][0], INVALID[6][0]], ids=['cycle', 'schema'])
def test_cli_refuses_an_invalid_file_before_anything_starts(small, change):
    _invalid(small, change)
    p = mlops_nb('pipeline', 'run', 'bad.yaml', cwd=small)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.startswith('error: ') and ('cycle' in p.stderr or "Step 'c'" in p.stderr), p.stderr
    assert not (small / 'mlflow.db').exists() and not (small / '.mlops_nb').exists()  # no store, no run, no job


def test_failing_step_resume_cache_and_an_edited_notebook(small):
    d = small
    (d / 'stop.txt').write_text('stop')
    p = mlops_nb('pipeline', 'run', 'pipeline.yaml', cwd=d)
    assert p.returncode == 1, p.stdout + p.stderr
    # text output names what failed and what did not run, and how to resume
    assert 'failed: b' in p.stdout and 'not run: c' in p.stdout and '--resume' in p.stdout, p.stdout
    pid = p.stdout.split('parent run ')[1].split()[0]
    c = client(d)
    parent = c.get_run(pid)
    assert parent.info.status == 'FAILED'
    st = {k: parent.data.tags[f'{TAG}step.{k}.state'] for k in 'abcd'}
    assert st == {'a': 'finished', 'b': 'failed', 'c': 'not_run', 'd': 'finished'}, st  # the sibling d still ran
    a_run = parent.data.tags[f'{TAG}step.a.run_id']
    b_run = c.get_run(parent.data.tags[f'{TAG}step.b.run_id'])
    assert b_run.info.status == 'FAILED' and 'the flag is up' in b_run.data.tags[f'{TAG}failure_evalue']

    # resume: the finished steps stand, the failed one and what it stopped run, in the same parent run
    (d / 'stop.txt').unlink()
    rc, res, p = run_json(d, 'pipeline.yaml', '--resume', pid)
    assert rc == 0, p.stdout + p.stderr
    assert res['run_id'] == pid and c.get_run(pid).info.status == 'FINISHED'
    assert {k: s['state'] for k, s in res['steps'].items()} == {'a': 'reused', 'b': 'finished', 'd': 'reused', 'c': 'finished'}
    assert res['steps']['a']['run_id'] == a_run
    assert res['steps']['c']['metrics']['z'] == 2 * 2 + 1

    # nothing changed: every step reuses its run
    rc, again, p = run_json(d, 'pipeline.yaml')
    assert rc == 0 and set(s['state'] for s in again['steps'].values()) == {'reused'}, p.stdout + p.stderr

    # an edited notebook reruns exactly its step and its descendants
    nb = nbformat.read(str(d / 'b.ipynb'), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell('# edited'))
    nbformat.write(nb, str(d / 'b.ipynb'))
    rc, edited, p = run_json(d, 'pipeline.yaml')
    assert rc == 0, p.stdout + p.stderr
    assert {k: s['state'] for k, s in edited['steps'].items()} == {'a': 'reused', 'b': 'finished', 'd': 'reused', 'c': 'finished'}
