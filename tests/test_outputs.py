"""Never destroy a user's file: an output equal to an input is refused before anything starts, files we did not
write are never removed, and an existing output is replaced only when the command succeeds (issue 29)."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from batch_helpers import make_rows, train_and_register
from conftest import clean_env, mlops_nb, wait_for

pytestmark = pytest.mark.filterwarnings('ignore')


def digest(folder: Path) -> dict:
    "Every file under `folder` (symlinks as their target text) -> its SHA-256."
    out = {}
    for p in sorted(folder.rglob('*')):
        if p.is_symlink(): out[str(p.relative_to(folder))] = 'link->' + os.readlink(p)
        elif p.is_file(): out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def write_nb(path: Path, *sources: str, params: str = 'seed = 0'):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={'tags': ['parameters']})]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    "A project with a registered classifier (`batchdemo@champion`), its model folder, and a `data/` folder of the user's files."
    root = tmp_path_factory.mktemp('outputs')
    env = clean_env(XDG_CACHE_HOME=str(root / 'cache'))  # the ledger of files we wrote
    os.environ['XDG_CACHE_HOME'] = env['XDG_CACHE_HOME']
    train_and_register(root, model='logistic')
    data = root / 'data'
    data.mkdir()
    rows = make_rows(300, seed=3)
    rows.to_parquet(data / 'in.parquet', index=False)
    rows.to_csv(data / 'in.csv', index=False)
    bad = rows.astype({'x0': object}); bad.loc[[2, 5], 'x0'] = 'n/a'
    bad.to_csv(data / 'bad.csv', index=False)
    (data / 'important.csv').write_text('the user,s\nown,file\n')
    (data / 'alias.parquet').symlink_to(data / 'in.parquet')
    write_nb(data / 'nb.ipynb', 'x = seed + 1\nprint(x)')
    (data / 'parts').mkdir(); rows.to_parquet(data / 'parts' / 'p0.parquet', index=False)
    (data / 'log').mkdir()
    (data / 'pipe.yaml').write_text('steps:\n  one:\n    notebook: nb.ipynb\n')
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    c = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    v = c.get_model_version_by_alias('batchdemo', 'champion')
    download_artifacts(artifact_uri=v.source, dst_path=str(data / 'model'), tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    yield root, env
    os.environ.pop('XDG_CACHE_HOME', None)


def n_runs(root: Path) -> int:
    from mlflow import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return sum(len(c.search_runs([e.experiment_id], max_results=1000)) for e in c.search_experiments())


M = 'models:/batchdemo@champion'
# command -> (arguments, the two paths the message must name); `D` is the user's data folder
CASES = {
    'run --output = notebook': (['run', 'D/nb.ipynb', '--output', 'D/nb.ipynb'], ['--output', 'is the notebook']),
    'run --output = notebook (relative, ..)': (['run', 'D/nb.ipynb', '--output', 'D/../data/nb.ipynb'], ['nb.ipynb']),
    'predict --out = input': (['predict', M, 'D/in.parquet', '--out', 'D/in.parquet'], ['--out', 'in.parquet']),
    'predict --out = input (symlink)': (['predict', M, 'D/in.parquet', '--out', 'D/alias.parquet'], ['alias.parquet', 'in.parquet']),
    'predict --rejects = input': (['predict', M, 'D/in.csv', '--out', 'D/o2.csv', '--rejects', 'D/in.csv'], ['--rejects', 'in.csv']),
    'predict --out inside input folder': (['predict', M, 'D/parts', '--out', 'D/parts/scored.parquet'], ['--out', 'parts']),
    'predict --out folder holds input': (['predict', M, 'D/in.parquet', '--out', 'D'], ['--out', 'in.parquet']),
    'predict --out = --rejects': (['predict', M, 'D/in.csv', '--out', 'D/x.csv', '--rejects', 'D/x.csv'], ['--rejects', '--out']),
    'predict --log-dir holds input': (['predict', M, 'D/parts/p0.parquet', '--out', 'D/o3.parquet', '--log-dir', 'D/parts'], ['--log-dir']),
    'drift --report = reference': (['drift', 'D/in.parquet', 'D/in.csv', '--report', 'D/in.parquet'], ['--report', 'REFERENCE']),
    'drift --report = current': (['drift', 'D/in.parquet', 'D/in.csv', '--report', 'D/in.csv'], ['--report', 'CURRENT']),
    'deploy --out inside model': (['deploy', 'D/model', '--out', 'D/model/ctx'], ['--out', 'model']),
    'deploy --out a file': (['deploy', M, '--out', 'D/important.csv'], ['important.csv', 'is a file']),
    'init onto a file': (['init', 'D/important.csv'], ['important.csv', 'is a file']),
    'init onto a non-empty folder': (['init', 'D'], ['not empty']),
    'serve --log-dir = model folder': (['serve', 'D/model', '--log-dir', 'D/model', '--port', '0'], ['--log-dir', 'model']),
    'run --junit-xml = notebook': (['run', 'D/nb.ipynb', '--junit-xml', 'D/nb.ipynb'], ['--junit-xml', 'nb.ipynb']),
    'run --junit-xml = --output': (['run', 'D/nb.ipynb', '--output', 'D/o.ipynb', '--junit-xml', 'D/o.ipynb'], ['--junit-xml', '--output']),
    'sweep --junit-xml = notebook': (['sweep', 'D/nb.ipynb', '--grid', 'seed=1,2', '--junit-xml', 'D/nb.ipynb'], ['--junit-xml', 'nb.ipynb']),
    'pipeline --junit-xml = pipeline file': (['pipeline', 'run', 'D/pipe.yaml', '--junit-xml', 'D/pipe.yaml'], ['--junit-xml', 'pipe.yaml']),
    'monitor: drift results over --labels': (['monitor', 'batchdemo', '--log-dir', 'D/log', '--labels', 'D/log/drift', '--dry-run'],
                                             ['--labels']),
}


@pytest.mark.parametrize('case', list(CASES))
def test_an_output_that_is_an_input_is_refused_and_nothing_changes(project, case):
    root, env = project
    args, named = CASES[case]
    data = root / 'data'
    before, runs = digest(data), n_runs(root)
    path = lambda a: str(data) if a == 'D' else str(data / a[2:]) if a.startswith('D/') else a
    r = mlops_nb(*map(path, args), cwd=root, env=env, timeout=300)
    assert r.returncode == 2, (case, r.returncode, r.stdout, r.stderr)
    for n in named: assert n in r.stderr, (case, n, r.stderr)
    assert 'serving' not in r.stdout
    assert digest(data) == before, case  # every file of the user's byte-identical
    assert n_runs(root) == runs  # nothing started


def test_docs_out_over_the_notebooks_is_refused(tmp_path):
    proj = tmp_path / 'proj'
    (proj / 'nbs').mkdir(parents=True)
    (proj / 'settings.ini').write_text('[DEFAULT]\nlib_name = demo\nnbs_path = nbs\ndoc_path = _docs\n')
    write_nb(proj / 'nbs' / 'index.ipynb', '1 + 1')
    before = digest(proj)
    for out in ('nbs', '.', 'nbs/site'):
        r = mlops_nb('docs', '--out', out, cwd=proj, timeout=300)
        assert r.returncode == 2 and '--out' in r.stderr, (out, r.stderr)
        assert digest(proj) == before


def test_an_unrelated_file_at_a_rejects_or_output_path_is_never_deleted(project):
    root, env = project
    data = root / 'data'
    important = data / 'important.csv'
    keep = important.read_bytes()
    # named as --rejects with no rejects to write: refused up front (it is not ours), kept
    r = mlops_nb('predict', M, data / 'in.csv', '--out', root / 'o1.csv', '--rejects', important, cwd=root, env=env)
    assert r.returncode == 2 and 'important.csv' in r.stderr and '--overwrite' in r.stderr, r.stderr
    assert important.read_bytes() == keep
    # even with --overwrite, a stale-rejects clean-up never removes a file we did not write
    r = mlops_nb('predict', M, data / 'in.csv', '--out', root / 'o1.csv', '--rejects', important, '--overwrite', cwd=root, env=env)
    assert r.returncode == 0, r.stderr
    assert important.read_bytes() == keep
    # a file of the user's where the default rejects file would go: refused
    (root / 'o4.rejects.csv').write_text('mine\n')
    r = mlops_nb('predict', M, data / 'bad.csv', '--out', root / 'o4.csv', cwd=root, env=env)
    assert r.returncode == 2 and 'o4.rejects.csv' in r.stderr, r.stderr
    assert (root / 'o4.rejects.csv').read_text() == 'mine\n' and not (root / 'o4.csv').exists()
    # an existing output that is not ours needs --overwrite; then it is replaced
    (root / 'mine.parquet').write_bytes(b'not a parquet file of ours')
    r = mlops_nb('predict', M, data / 'in.parquet', '--out', root / 'mine.parquet', cwd=root, env=env)
    assert r.returncode == 2 and '--overwrite' in r.stderr and (root / 'mine.parquet').read_bytes() == b'not a parquet file of ours'
    r = mlops_nb('predict', M, data / 'in.parquet', '--out', root / 'mine.parquet', '--overwrite', cwd=root, env=env)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(root / 'mine.parquet')) == 300
    # an output folder holding someone else's files: refused, the files untouched
    (root / 'scored').mkdir(); (root / 'scored' / 'part-00000.parquet').write_bytes(b'user data')
    r = mlops_nb('predict', M, data / 'in.parquet', '--out', root / 'scored', cwd=root, env=env)
    assert r.returncode == 2 and 'scored' in r.stderr
    assert (root / 'scored' / 'part-00000.parquet').read_bytes() == b'user data'


def test_a_stale_rejects_file_we_wrote_is_removed_and_outputs_are_replaced_on_rerun(project):
    root, env = project
    data = root / 'data'
    out, rej = root / 'again.csv', root / 'again.rejects.csv'
    r = mlops_nb('predict', M, data / 'bad.csv', '--out', out, cwd=root, env=env)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(rej)) == 2
    r = mlops_nb('predict', M, data / 'in.csv', '--out', out, cwd=root, env=env)  # fixed input: no rejects now
    assert r.returncode == 0, r.stderr
    assert not rej.exists() and len(pd.read_csv(out)) == 300  # ours, stale: removed; the output replaced
    assert not list(root.glob('.*.tmp')) and not (root / 'again.csv.parts').exists()


def test_request_log_retention_removes_only_log_parts(tmp_path):
    from mlops_nb.reqlog import log_frame, prune_log, write_part
    d = tmp_path / 'log'
    ours = write_part(d, pd.DataFrame({'x': [1.0]}))
    theirs = d / 'customers.parquet'
    pd.DataFrame({'x': [1.0]}).to_parquet(theirs)
    (d / 'notes.txt').write_text('keep')
    old = time.time() - 90 * 86400
    for p in (ours, theirs): os.utime(p, (old, old))
    removed = prune_log(d, max_age_days=1)
    assert removed == [ours] and not ours.exists()
    assert theirs.exists() and (d / 'notes.txt').exists()


def test_a_failed_run_leaves_the_previous_output(project, tmp_path):
    root, env = project
    nb = write_nb(tmp_path / 'job.ipynb', 'assert seed != 13, "unlucky"\nprint("done", seed)')
    out = tmp_path / 'executed.ipynb'
    r = mlops_nb('run', nb, '--output', out, '-p', 'seed', '1', cwd=root, env=env)
    assert r.returncode == 0, r.stderr
    first = out.read_bytes()
    assert b'done' in first
    r = mlops_nb('run', nb, '--output', out, '-p', 'seed', '13', cwd=root, env=env)
    assert r.returncode == 1
    assert out.read_bytes() == first  # the failed run's partial notebook is in the run, not over the output
    assert 'unlucky' in r.stdout + r.stderr
    r = mlops_nb('run', nb, '--output', out, '-p', 'seed', '2', cwd=root, env=env)
    assert r.returncode == 0 and out.read_bytes() != first  # success replaces it
    assert nbformat.read(nb, 4).cells[0].source == 'seed = 0' and len(nbformat.read(nb, 4).cells) == 2


@pytest.mark.parametrize('command', ['run', 'predict', 'drift'])
def test_a_command_killed_mid_write_leaves_the_previous_output(project, tmp_path, command):
    root, env = project
    data = root / 'data'
    env = {**env, 'MLOPS_NB_WORKER': '0'}  # the job is this command's child: killing the group kills the writer
    if command == 'run':
        nb = write_nb(tmp_path / 'slow.ipynb', 'import time\nprint("start", flush=True)\ntime.sleep(0.2 if seed == 0 else 120)')
        out = tmp_path / 'slow_out.ipynb'
        args, again = ['run', nb, '--output', out], ['run', nb, '--output', out, '-p', 'seed', '1']
        started = lambda: list((root / '.mlops_nb' / 'outputs').rglob('slow.ipynb')) and n_runs(root) > runs0
    elif command == 'predict':
        big = tmp_path / 'big.parquet'
        make_rows(400_000, seed=5).to_parquet(big, index=False, row_group_size=20_000)
        out = tmp_path / 'scored.parquet'
        args = ['predict', M, data / 'in.parquet', '--out', out]  # a small batch first: the output to keep
        again = ['predict', M, big, '--out', out, '--workers', '1', '--chunk-rows', '5000']
        started = lambda: list((tmp_path / 'scored.parquet.parts').glob('part-*.parquet'))
    else:
        out = tmp_path / 'drift.html'
        args = again = ['drift', data / 'in.parquet', data / 'in.csv', '--report', out]
        started = lambda: n_runs(root) > runs0
    runs0 = n_runs(root)
    r = mlops_nb(*args, cwd=root, env=env, timeout=600)
    assert r.returncode in (0, 1), r.stderr  # drift exits 1 when it finds drift; the report is written either way
    first = out.read_bytes()
    runs0 = n_runs(root)
    exe = Path(sys.executable).parent / 'mlops-nb'
    p = subprocess.Popen([str(exe), *map(str, again)], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        wait_for(lambda: started() or p.poll() is not None, f'{command} to start writing', limit=300)
        assert p.poll() is None, f'{command} ended before it could be killed: nothing was tested'
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        try: os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError: pass
        p.wait()
    assert out.read_bytes() == first, command  # the previous output, whole
