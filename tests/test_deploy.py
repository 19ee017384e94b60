"""`mlops-nb deploy`: the build context is linted (hadolint), its manifests validated offline against Kubernetes' schemas,
and the Dockerfile's own install and entrypoint steps run in a fresh virtual environment serving the copied model
with no access to the registry."""
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import layer_on_this_environment, mlops_nb
from serve_helpers import Proc, http, post_json, store_env, train_and_register


@pytest.fixture(scope='module')
def context(tmp_path_factory):
    d = tmp_path_factory.mktemp('deploy')
    train_and_register(d, 'bc', 20)
    r = mlops_nb('deploy', 'models:/bc@champion', '--out', d / 'ctx', '--json', cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stdout + r.stderr
    return d, json.loads(r.stdout)


XGB_SCRIPT = """import mlflow, xgboost
from sklearn.datasets import load_breast_cancer
X, y = load_breast_cancer(return_X_y=True, as_frame=True)
with mlflow.start_run() as r:
    m = xgboost.XGBClassifier(n_estimators=20, max_depth=3, random_state=0).fit(X, y)
    mlflow.xgboost.log_model(m, name='model', input_example=X.head(5), pip_requirements=[f'xgboost=={xgboost.__version__}'])
mv = mlflow.register_model(f'runs:/{r.info.run_id}/model', 'xgbd')
mlflow.MlflowClient().set_registered_model_alias('xgbd', 'champion', mv.version)
"""


@pytest.fixture(scope='module')
def xgb_context(context):
    "An XGBoost model logged and registered by plain MLflow code (no mlops_nb), deployed beside the scikit-learn one."
    pytest.importorskip('xgboost')
    d, _ = context
    r = subprocess.run([sys.executable, '-c', XGB_SCRIPT], cwd=d, env=store_env(d), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = mlops_nb('deploy', 'models:/xgbd@champion', '--out', d / 'ctx_xgb', '--json', cwd=d, env=store_env(d))
    assert r.returncode == 0, r.stdout + r.stderr
    return d / 'ctx_xgb'


def _tool(name):
    exe = Path(sys.executable).parent / name
    if not exe.exists(): pytest.skip(f'{name} is not installed (pip install -e ".[dev]" installs it)')
    return str(exe)


def test_context_holds_what_the_image_needs(context):
    d, r = context
    ctx = d / 'ctx'
    assert (r['name'], r['version'], r['alias']) == ('bc', '1', 'champion')
    for f in ('Dockerfile', 'requirements.txt', 'model/MLmodel', 'model/serving.json', 'model/holdout.parquet',
              'k8s/deployment.yaml', 'k8s/service.yaml', 'k8s/hpa.yaml', 'src/pyproject.toml', 'src/mlops_nb/serve.py'):
        assert (ctx / f).exists(), f
    reqs = (ctx / 'requirements.txt').read_text().split()
    assert reqs and all('==' in x for x in reqs)
    text = (ctx / 'Dockerfile').read_text()
    assert '-slim' in text and 'USER 10001' in text and 'HEALTHCHECK' in text and '/health' in text
    again = mlops_nb('deploy', 'models:/bc@champion', '--out', ctx, cwd=d, env=store_env(d))
    assert again.returncode == 2 and 'is not empty' in again.stderr


def test_dockerfile_lints_clean(context):
    d, _ = context
    r = subprocess.run([_tool('hadolint'), str(d / 'ctx' / 'Dockerfile')], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_manifests_validate_against_kubernetes_schemas(context):
    d, _ = context
    files = sorted((d / 'ctx' / 'k8s').glob('*.yaml'))
    r = subprocess.run([_tool('kubernetes-validate'), '--strict', *map(str, files)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count('passed') == 3, r.stdout
    import yaml
    dep = yaml.safe_load((d / 'ctx' / 'k8s' / 'deployment.yaml').read_text())
    pod = dep['spec']['template']
    c = pod['spec']['containers'][0]
    assert c['readinessProbe']['httpGet']['path'] == '/ping' and c['livenessProbe']['httpGet']['path'] == '/health'
    assert c['resources']['requests'] and pod['metadata']['annotations']['prometheus.io/scrape'] == 'true'


def _steps(dockerfile: str):
    "The Dockerfile's RUN commands that install, and its ENTRYPOINT + CMD argv."
    runs, argv = [], []
    for line in dockerfile.splitlines():
        word, _, rest = line.partition(' ')
        if word == 'RUN' and 'pip install' in rest: runs.append(rest)
        elif word in ('ENTRYPOINT', 'CMD'): argv += json.loads(rest)
    return runs, argv


def _install(ctx: Path, app: Path, bin_: Path) -> list:
    "The context copied to `app` (the image's WORKDIR), its Dockerfile's install steps run with the venv's pip; its entrypoint argv."
    shutil.copytree(ctx, app)
    runs, argv = _steps((app / 'Dockerfile').read_text())
    assert len(runs) == 2 and argv[:3] == ['mlops-nb', 'serve', 'model']
    for cmd in runs:
        args = shlex.split(cmd)
        p = subprocess.run([str(bin_ / 'pip'), *args[1:]] if args[0] == 'pip' else args, cwd=app, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    where = subprocess.run([str(bin_ / 'python'), '-c', 'import mlops_nb; print(mlops_nb.__file__)'], cwd=app, capture_output=True,
                           text=True)
    assert where.stdout.startswith(str(bin_.parent)), where.stdout + where.stderr  # the context's copy, not this checkout
    argv = [str(bin_ / 'mlops-nb'), *argv[1:]]
    argv[argv.index('--port') + 1] = '{port}'
    argv[argv.index('--host') + 1] = '127.0.0.1'
    argv[argv.index('--log-dir') + 1] = str(app / 'requests')
    return argv


def _serves_as_pyfunc(argv: list, app: Path, bin_: Path, want_version: tuple):
    "The entrypoint with the store out of reach answers 50 rows as `mlflow.pyfunc` does on the context's model folder."
    import mlflow.pyfunc
    env = store_env(app, MLFLOW_TRACKING_URI='http://127.0.0.1:9')  # no registry: nothing listens there
    env['PATH'] = f"{bin_}:{env.get('PATH', '')}"
    srv = Proc(argv, app, env)
    try:
        v = json.loads(http('GET', srv.base + '/version')[2])
        assert (v['name'], v['version'], v['alias']) == want_version, v
        from mlops_nb.data import load_dataset
        X = load_dataset('breast_cancer').drop(columns='target').head(50)
        st, _, doc = post_json(srv.base, {'dataframe_split': json.loads(X.to_json(orient='split', index=False))})
        assert st == 200 and doc['predictions'] == mlflow.pyfunc.load_model(str(app / 'model')).predict(X).tolist(), doc
    finally:
        assert srv.terminate() == 0, srv.output()


def test_dockerfile_steps_serve_the_copied_model_without_the_registry(context, xgb_context, tmp_path):
    """The install steps in one fresh venv, then the entrypoint, with the store out of reach: predictions as the model's own.
    The scikit-learn model (train-job run) first; then, in the same venv, the XGBoost model logged by plain MLflow code,
    whose context adds its own requirement (xgboost) to ours.

    As in test_init, the venv is layered on this test's environment (pip still resolves every pinned requirement and
    installs what is missing or differs); MLOPS_NB_INIT_ISOLATED=1 installs everything from scratch instead."""
    d, r = context
    subprocess.run([sys.executable, '-m', 'venv', str(tmp_path / 'venv')], check=True)
    if os.environ.get('MLOPS_NB_INIT_ISOLATED') != '1':
        layer_on_this_environment(tmp_path / 'venv')
    bin_ = tmp_path / 'venv' / 'bin'
    _serves_as_pyfunc(_install(d / 'ctx', tmp_path / 'app', bin_), tmp_path / 'app', bin_, ('bc', '1', 'champion'))
    assert any(q.startswith('xgboost==') for q in (xgb_context / 'requirements.txt').read_text().split())
    _serves_as_pyfunc(_install(xgb_context, tmp_path / 'app_xgb', bin_), tmp_path / 'app_xgb', bin_, ('xgbd', '1', 'champion'))
