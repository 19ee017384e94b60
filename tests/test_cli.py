"""The `mlops-nb` command from outside: help, version, exit codes."""
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
