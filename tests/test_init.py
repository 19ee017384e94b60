"""`mlops-nb init`: the new project installs in a fresh virtual environment, passes its own checks and
tests, and its train job runs; its GitHub workflow is valid."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, clean_env, layer_on_this_environment, mlops_nb


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('init')
    r = mlops_nb('init', tmp / 'churn-model', '--json', cwd=tmp)
    assert r.returncode == 0, r.stderr
    files = {Path(f).relative_to(tmp / 'churn-model').as_posix() for f in json.loads(r.stdout)['files']}
    return tmp / 'churn-model', files


def test_layout_and_refusal(project):
    path, files = project
    assert {'settings.ini', 'setup.py', 'README.md', '.ci/run', '.ci/check_sync.py', '.github/workflows/ci.yml',
            '.gitattributes', 'nbs/00_core.ipynb', 'nbs/jobs/train.ipynb', 'nbs/jobs/evaluate.ipynb',
            'tests/test_core.py', 'churn_model/core.py'} <= files
    ini = (path / 'settings.ini').read_text()
    assert 'allowed_cell_metadata_keys = tags' in ini and 'lib_name = churn_model' in ini
    readme = (path / 'README.md').read_text()
    assert readme.count('```bash') >= 2 and 'bash .ci/run' in readme
    if shutil.which('git'):
        cfg = subprocess.run(['git', 'config', '--get', 'merge.nbdev-merge.driver'], cwd=path, capture_output=True, text=True)
        assert cfg.stdout.strip() == 'nbdev_merge %O %A %B %P'
    r = mlops_nb('init', path, cwd=path.parent)
    assert r.returncode == 2 and 'not empty' in r.stderr


def test_workflow_validates_against_the_github_schema(project):
    path, _ = project
    exe = Path(sys.executable).parent / 'check-jsonschema'
    if not exe.exists():
        pytest.skip('check-jsonschema not installed: pip install -e ".[dev]"')
    r = subprocess.run([str(exe), '--builtin-schema', 'vendor.github-workflows', str(path / '.github/workflows/ci.yml')],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fresh_venv_installs_tests_and_trains(project, tmp_path):
    """One fresh venv: this checkout (the project's dependency), then the project with its dev extra; then the
    project's own sync check, its tests and its train job.

    By default the venv is layered on this test's environment for third-party packages (pip still installs
    mlops_nb and the project into it, and resolves every requirement); MLOPS_NB_INIT_ISOLATED=1 installs
    everything from scratch instead (pip's cache makes it a few minutes)."""
    path, _ = project
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    py, bindir = venv / 'bin' / 'python', venv / 'bin'
    if os.environ.get('MLOPS_NB_INIT_ISOLATED') != '1':
        layer_on_this_environment(venv)
    env = clean_env(MLFLOW_DISABLE_TELEMETRY='true', PIP_DISABLE_PIP_VERSION_CHECK='1', VIRTUAL_ENV=str(venv),
                    PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop('PYTHONPATH', None)

    def run(*cmd, cwd=path):
        r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, f"{cmd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    run(py, '-m', 'pip', 'install', '-q', '-e', ROOT)
    run(py, '-m', 'pip', 'install', '-q', '-e', '.[dev]')
    where = run(py, '-c', 'import mlops_nb, churn_model; print(mlops_nb.__file__); print(churn_model.__file__)').stdout.split()
    assert where == [str(ROOT / 'mlops_nb' / '__init__.py'), str(path / 'churn_model' / '__init__.py')], where
    run(py, '.ci/check_sync.py')  # notebooks clean, package in sync (nbdev from the project's dev extra)
    r = run(py, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests')
    assert '1 passed' in r.stdout
    store = tmp_path / 'store'
    store.mkdir()
    r = run(bindir / 'mlops-nb', 'run', path / 'nbs/jobs/train.ipynb', '-p', 'n_estimators', '10', '--json',
            '--tracking-uri', f"sqlite:///{store / 'mlflow.db'}")
    job = json.loads(r.stdout)
    assert job['status'] == 'FINISHED' and job['metrics']['roc_auc'] > 0.9, job


def test_new_project_gets_a_docs_site_and_a_broken_link_fails_it(project):
    path, _ = project
    env = clean_env(MLFLOW_DISABLE_TELEMETRY='true')
    r = mlops_nb('docs', '--out', path / '_site', '--json', cwd=path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    pages = set(json.loads(r.stdout)['pages'])
    assert {'index', 'core', 'jobs/train', 'jobs/evaluate'} <= pages
    assert 'command-line' not in pages  # the project has no console script of its own (mlops-nb's is not its page)
    assert 'make_model' in (path / '_site' / 'core.html').read_text()  # show_doc rendered from the starter notebook
    readme = path / 'README.md'
    readme.write_text(readme.read_text() + '\nSee [the guide](guide.md).\n')
    try:
        r = mlops_nb('docs', '--out', path / '_site', cwd=path, env=env)
    finally:
        readme.write_text(readme.read_text().replace('\nSee [the guide](guide.md).\n', ''))
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'guide.md' in r.stderr and 'Sphinx refused the site' in r.stderr
