"""The `mlops-nb` command from outside: help, version, exit codes."""
import json
import re

from mlops_nb import __version__
from conftest import mlops_nb


def test_help_teaches(workdir):
    r = mlops_nb('--help', cwd=workdir)
    assert r.returncode == 0
    for cmd in ('quickstart', 'run', 'params', 'ui'):
        assert cmd in r.stdout
    assert 'examples:' in r.stdout and 'exit codes' in r.stdout


def test_version(workdir):
    r = mlops_nb('--version', cwd=workdir)
    assert r.returncode == 0 and r.stdout.strip() == f'mlops_nb {__version__}'


def test_no_command_is_usage_error(workdir):
    r = mlops_nb(cwd=workdir)
    assert r.returncode == 2 and 'usage: mlops-nb' in r.stdout


def test_unknown_flag_is_usage_error(workdir):
    r = mlops_nb('run', 'train', '--no-such-flag', cwd=workdir)
    assert r.returncode == 2 and 'unrecognized arguments: --no-such-flag' in r.stderr


def test_params_of_bundled_job(workdir):
    r = mlops_nb('params', 'train', cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert re.search(r'n_estimators\s+int\s+100', r.stdout), r.stdout
    assert not (workdir / 'mlflow.db').exists()  # reading a schema starts nothing


LIBRARY_LINE = re.compile(r'\b(INFO|WARNING|DEBUG)\b|alembic|mlflow\.|Running upgrade|database tables')


def _trivial_notebook(path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    nb = new_notebook(cells=[new_code_cell('n: int = 1', metadata={'tags': ['parameters']}),
                             new_code_cell('import mlops_nb\nmlops_nb.record("n", n)')])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)


def test_a_first_command_in_a_new_folder_prints_no_library_log_lines(tmp_path):
    "A new folder: no store, no worker from before; the first command makes both and says only its own words."
    for name, flags in (('quiet', []), ('no_worker', ['--no-worker']), ('verbose', ['-v'])):
        d = tmp_path / name
        d.mkdir()
        _trivial_notebook(d / 'ok.ipynb')
        r = mlops_nb('run', 'ok.ipynb', *flags, cwd=d)
        assert r.returncode == 0, r.stderr
        assert (d / 'mlflow.db').exists()
        st = json.loads(mlops_nb('worker', 'status', '--json', cwd=d).stdout)  # the environment's worker served this folder, or not
        assert (str(d) in [p['path'] for p in st.get('projects', [])]) == (name != 'no_worker'), st
        if name == 'verbose':  # -v lets them through: MLflow makes the store's tables in this command
            assert 'Creating initial MLflow database tables' in r.stderr, r.stderr
        else:
            assert not LIBRARY_LINE.search(r.stderr), r.stderr
