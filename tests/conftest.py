"""Shared helpers for the end-to-end tests: run the real `mlops-nb` command in a scratch directory."""
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra) -> dict:
    "The environment without any store settings of the caller, so each test uses its own scratch store."
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLFLOW_', 'MLOPS_NB_'))}
    env['MLFLOW_DISABLE_TELEMETRY'] = 'true'  # MLflow 3 sends usage telemetry by default; tests send nothing
    env['MLOPS_NB_WORKER_IDLE'] = '10'  # commands run in each test project's warm worker, which leaves soon after the test
    env.update(extra)
    return env


def mlops_nb(*args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    "Run the installed `mlops-nb` command in `cwd`; returns the completed process (text output)."
    exe = Path(sys.executable).parent / 'mlops-nb'
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, env=env or clean_env(), capture_output=True,
                          text=True, timeout=timeout)



def wait_for(predicate, what: str, limit: float = 120):
    "Poll until `predicate()` is truthy (a generous limit for a busy machine; not a timing assertion)."
    end = time.time() + limit
    while time.time() < end:
        v = predicate()
        if v: return v
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


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




_MLFLOW_ENV = {k: v for k, v in os.environ.items() if k.startswith('MLFLOW_')}  # as the test session found it


@pytest.fixture(autouse=True)
def _mlflow_globals_reset():
    """Tests share worker processes (`make test` runs two xdist workers): MLflow's process-wide tracking and
    registry URIs that one in-process test sets (registration points MLflow's global store at its own, and
    MLflow 3 mirrors that into MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI) must not reach the next test's clients."""
    yield
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils
    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None
    for k in [k for k in os.environ if k.startswith('MLFLOW_')]: os.environ.pop(k)
    os.environ.update(_MLFLOW_ENV)


def layer_on_this_environment(venv: Path):
    """Let the new venv see this environment's packages *behind* its own (a .pth file), so pip finds mlflow,
    scikit-learn, ... already satisfied instead of reinstalling ~300 MB: CI-affordable on a shared machine."""
    sp = next((venv / 'lib').glob('python3*/site-packages'))
    outer = [p for p in sys.path if p.endswith('site-packages') and Path(p).is_dir()]
    (sp / '_outer_env.pth').write_text('\n'.join(outer) + '\n')
