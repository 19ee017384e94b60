"""Shared helpers for the end-to-end tests: run the real `mlops-nb` command in a scratch directory."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra) -> dict:
    "The environment without any store settings of the caller, so each test uses its own scratch store."
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'MLOPS_NB_'))}
    env['MLFLOW_DISABLE_TELEMETRY'] = 'true'  # MLflow 3 sends usage telemetry by default; tests send nothing
    env.update(extra)
    return env


def mlops_nb(*args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    "Run the installed `mlops-nb` command in `cwd`; returns the completed process (text output)."
    exe = Path(sys.executable).parent / 'mlops-nb'
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, env=env or clean_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    "An empty working directory outside any project (no settings.ini above it)."
    d = tmp_path / 'work'
    d.mkdir()
    return d


@pytest.fixture
def store(workdir):
    "An MlflowClient on the embedded default store of `workdir`."
    from mlflow import MlflowClient
    return lambda: MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`), keep each test file on one worker, so
    module fixtures (a trained model, a served champion) are built once and a file's tests run in order;
    the job notebooks under nbval share one worker too (evaluate.ipynb reads the run train.ipynb made)."""
    for item in items:
        path = Path(str(item.fspath))
        group = 'job-notebooks' if path.suffix == '.ipynb' else path.name
        item.add_marker(pytest.mark.xdist_group(group))
