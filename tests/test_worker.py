"""The persistent warm worker (issues 11, 26): served commands, one worker for many projects, never stale, faults, concurrency,
isolation, a thin client. Each test has a worker of its own (MLOPS_NB_WORKER_DIR), so tests never stop each other's."""
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import clean_env, mlops_nb, wait_for

EXE = Path(sys.executable).parent / 'mlops-nb'


def notebook(path: Path, body: str, params: str = 'x: float = 2.0') -> Path:
    nb = new_notebook(cells=[new_code_cell(params, metadata={'tags': ['parameters']}), new_code_cell(body)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)
    return path


WORKER_DIR = None  # this test's worker folder (short: a Unix socket path has a length limit)


@pytest.fixture(autouse=True)
def worker_dir():
    global WORKER_DIR
    WORKER_DIR = tempfile.mkdtemp(prefix='w')
    yield WORKER_DIR
    shutil.rmtree(WORKER_DIR, ignore_errors=True)


def wenv(**extra) -> dict:
    "An environment with the worker on (whatever the caller's default), short idle timeout, this test's own worker."
    return clean_env(**{'MLOPS_NB_WORKER': '1', 'MLOPS_NB_WORKER_IDLE': '120', 'MLOPS_NB_WORKER_DIR': WORKER_DIR, **extra})


def status(cwd, env) -> dict:
    r = mlops_nb('worker', 'status', '--json', cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def runs(d: Path) -> list:
    "The runs of the project's store, newest first (none while the command has not made the store yet)."
    from mlflow import MlflowClient
    if not (d / 'mlflow.db').exists(): return []
    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    return c.search_runs([e.experiment_id for e in c.search_experiments()], order_by=['start_time DESC'])


@pytest.fixture
def project(tmp_path):
    "A project folder (settings.ini) whose worker is stopped, with its jobs, at the end of the test."
    d = tmp_path / 'proj'
    d.mkdir()
    (d / 'settings.ini').write_text('[mlops_nb]\n')
    notebook(d / 'triv.ipynb', 'import mlops_nb\ny = x * 21\nmlops_nb.record("y", y)')
    yield d
    mlops_nb('worker', 'stop', '--force', cwd=d, env=wenv())


def test_worker_serves_many_commands_then_exits_when_idle(project):
    env = wenv(MLOPS_NB_WORKER_IDLE='15')  # long enough that a loaded machine's gaps between commands do not end it
    for _ in range(3):
        r = mlops_nb('run', 'triv.ipynb', cwd=project, env=env)
        assert r.returncode == 0, r.stderr
        assert 'FINISHED' in r.stdout and 'y=42' in r.stdout
    st = status(project, env)
    assert st['running'] and st['served'] == {'commands': 3, 'jobs': 3}, st
    pid, sock = st['pid'], Path(st['socket'])
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    wait_for(lambda: not status(project, env)['running'], 'the idle worker to exit', 90)
    assert not sock.exists()
    wait_for(lambda: not Path(f'/proc/{pid}').exists(), 'the worker process to end', 10)
    assert len([r for r in runs(project) if r.info.status == 'FINISHED']) == 3


def test_edited_module_is_picked_up_by_the_next_run(project, tmp_path):
    lib = tmp_path / 'lib' / 'mypkg_w'
    lib.mkdir(parents=True)
    (lib / '__init__.py').write_text('VALUE = 1\n')
    notebook(project / 'edit.ipynb', 'import mypkg_w, mlops_nb\nmlops_nb.record("v", mypkg_w.VALUE)')
    env = wenv(PYTHONPATH=str(lib.parent))
    for expect in (1, 1):
        r = mlops_nb('run', 'edit.ipynb', cwd=project, env=env)
        assert r.returncode == 0 and f'v={expect}' in r.stdout, r.stdout + r.stderr
    first = status(project, env)['pid']
    (lib / '__init__.py').write_text('VALUE = 2  # edited\n')
    r = mlops_nb('run', 'edit.ipynb', cwd=project, env=env)
    assert r.returncode == 0 and 'v=2' in r.stdout, r.stdout + r.stderr
    assert status(project, env)['pid'] != first  # a fresh worker, because a module it had imported changed
    log = Path(status(project, env)['log']).read_text()
    assert 'mypkg_w/__init__.py changed' in log


def test_killed_worker_is_replaced_and_its_job_ends_failed(project):
    notebook(project / 'slow.ipynb', 'import time\nfor i in range(300):\n    time.sleep(0.1)')
    env = wenv()
    assert mlops_nb('run', 'triv.ipynb', cwd=project, env=env).returncode == 0
    old = status(project, env)['pid']
    p = subprocess.Popen([str(EXE), 'run', 'slow.ipynb'], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the job's process exists (its pid is on the run): a worker killed before that leaves a run for the next command to mark lost
    wait_for(lambda: any(r.info.status == 'RUNNING' and 'mlops_nb.pid' in r.data.tags for r in runs(project)), 'the slow job to start', 60)
    os.kill(old, signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and 'worker' in err and 'died' in err, err
    slow = wait_for(lambda: next((r for r in runs(project) if r.data.tags.get('mlops_nb.job') == 'slow' and r.info.status != 'RUNNING'), None),
                    'the slow run to end', 60)
    assert slow.info.status == 'FAILED' and slow.data.tags.get('mlops_nb.failure_reason') == 'driver_lost', slow.data.tags
    r = mlops_nb('run', 'triv.ipynb', cwd=project, env=env)
    assert r.returncode == 0, r.stderr
    assert status(project, env)['pid'] != old


def test_two_commands_at_once_share_one_worker(project):
    env = wenv()
    assert mlops_nb('worker', 'start', cwd=project, env=env).returncode == 0
    pid = status(project, env)['pid']
    ps = [subprocess.Popen([str(EXE), 'run', 'triv.ipynb', '-p', 'x', str(v), '--json'], cwd=project, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in (1, 3)]
    docs = []
    for p in ps:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    assert sorted(d['recorded']['y'] for d in docs) == [21.0, 63.0]
    st = status(project, env)
    assert st['pid'] == pid and st['served'] == {'commands': 2, 'jobs': 2}


def test_three_projects_share_one_worker_each_with_its_own_store_and_modules(tmp_path):
    "One worker serves three folders; each job runs with its folder's store, and its own module of a shared name."
    lib = tmp_path / 'lib' / 'helper_w'
    lib.mkdir(parents=True)
    (lib / '__init__.py').write_text('VALUE = 0\n')
    env = wenv(PYTHONPATH=str(lib.parent))
    dirs = []
    for name, value in (('c', None), ('a', 1), ('b', 2)):  # c has no helper_w: its job imports lib's, which the worker then preloads
        d = tmp_path / name
        d.mkdir()
        (d / 'settings.ini').write_text('[mlops_nb]\n')
        if value is not None: (d / 'helper_w.py').write_text(f'VALUE = {value}\n')
        notebook(d / 'which.ipynb', 'import helper_w, mlops_nb\nmlops_nb.record("which", helper_w.VALUE)')
        dirs.append(d)
    try:
        for d, want in zip(dirs, (0, 1, 2)):
            r = mlops_nb('run', 'which.ipynb', '--json', cwd=d, env=env)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)['recorded']['which'] == want, (d, r.stdout)  # a's and b's own helper_w, not the preloaded one
        st = status(dirs[0], env)
        assert st['served'] == {'commands': 3, 'jobs': 3} and {status(d, env)['pid'] for d in dirs} == {st['pid']}
        assert sorted(p['path'] for p in st['projects']) == sorted(map(str, dirs))
        for d, want in zip(dirs, (0, 1, 2)):
            (run,) = runs(d)  # each folder's own store holds its own run, and only it
            assert run.info.status == 'FINISHED' and run.data.metrics['which'] == want
        opened = wait_for(lambda: {p['path']: p['store'] for p in status(dirs[0], env)['projects'] if p['store']}, 'the stores to open', 60)
        assert all(opened.get(str(d)) in (None, f"sqlite:///{d / 'mlflow.db'}") for d in dirs) and opened, opened
    finally:
        mlops_nb('worker', 'stop', '--force', cwd=tmp_path, env=env)
    from mlops_nb.worker import worker_paths
    code = 'import sys; sys.prefix = "/another/venv"; from mlops_nb.worker import worker_paths; print(worker_paths().key)'
    other_env = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip()
    assert other_env != worker_paths().key  # two Python environments never share one


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists('/usr/bin/python3'), reason='needs root (to act as another user) and /usr/bin/python3')
def test_socket_refuses_another_user(project):
    env = wenv()
    assert mlops_nb('worker', 'start', cwd=project, env=env).returncode == 0
    sock = Path(status(project, env)['socket'])
    folder = os.open(sock.parent, os.O_RDONLY | os.O_DIRECTORY)  # lets the other user reach the folder whatever its parents' modes
    probe = ('import socket, sys, struct\ns = socket.socket(socket.AF_UNIX)\n'
             'try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print("refused:", type(e).__name__); sys.exit(0)\n'
             'try:\n    s.sendall(struct.pack("!I", 1) + b"N")\n    print("closed" if s.recv(10) == b"" else "answered")\n'
             'except (ConnectionResetError, BrokenPipeError):\n    print("closed")\n')
    def as_nobody(): os.setgid(65534); os.setuid(65534)
    def probe_as_nobody():  # /usr/bin/python3: the test's venv may sit where another user cannot read it
        return subprocess.run(['/usr/bin/python3', '-c', probe, f'/proc/self/fd/{folder}/{sock.name}'], preexec_fn=as_nobody,
                              pass_fds=(folder,), capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        assert probe_as_nobody() == 'refused: PermissionError'  # the 0700 folder keeps others out
        os.chmod(sock.parent, 0o755); os.chmod(sock, 0o666)  # even if someone opened the permissions up...
        assert probe_as_nobody() == 'closed'  # ...the worker checks the peer's uid and hangs up
    finally:
        os.chmod(sock.parent, 0o700); os.chmod(sock, 0o600); os.close(folder)
    assert 'refused a connection from uid 65534' in Path(status(project, env)['log']).read_text()


CLIENT = ('import sys, json\nfrom mlops_nb.cli import main\nrc = main(sys.argv[1:], worker=True)\n'
          'print(json.dumps({"rc": rc, "heavy": [m for m in ("mlflow", "pandas", "papermill", "sklearn") if m in sys.modules]}))')


@pytest.mark.parametrize('args, rc', [(['run', 'triv.ipynb', '-p', 'x', '3'], 0), (['run', 'triv.ipynb', '-p', 'x', 'many'], 2),
                                      (['sweep', 'triv.ipynb', '--grid', 'x=1,2', '--workers', '2'], 0),
                                      (['sweep', 'triv.ipynb', '--grid', 'x=1,oops'], 2)])
def test_thin_client_imports_no_heavy_library(project, args, rc):
    r = subprocess.run([sys.executable, '-c', CLIENT, *args], cwd=project, env=wenv(), capture_output=True, text=True, timeout=300)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {'rc': rc, 'heavy': []}, r.stdout + r.stderr
    if rc == 2: assert 'error:' in r.stderr and 'x' in r.stderr


def test_ctrl_c_reaches_the_job_through_the_worker(project):
    notebook(project / 'slow.ipynb', 'import time\nfor i in range(300):\n    time.sleep(0.1)')
    env = wenv()
    assert mlops_nb('run', 'triv.ipynb', cwd=project, env=env).returncode == 0  # the store exists before it is watched
    p = subprocess.Popen([str(EXE), 'run', 'slow.ipynb'], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(r.info.status == 'RUNNING' for r in runs(project)), 'the run to start', 60)
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and 'interrupted' in err, err
    r = runs(project)[0]
    assert r.info.status == 'FAILED' and r.data.tags.get('mlops_nb.failure_reason') == 'interrupted'
    assert status(project, env)['running']  # the worker itself carries on


def test_output_and_exit_codes_match_without_the_worker(project):
    notebook(project / 'fail.ipynb', 'print("before")\nraise ValueError("boom")')
    env = wenv()
    docs = {}
    for flag in ([], ['--no-worker']):
        r = mlops_nb('run', 'fail.ipynb', '--json', *flag, cwd=project, env=env)
        assert r.returncode == 1, r.stderr
        docs[bool(flag)] = json.loads(r.stdout)
        r = mlops_nb('run', 'triv.ipynb', *flag, cwd=project, env=env)
        assert r.returncode == 0 and 'y=42' in r.stdout
    a, b = docs[False], docs[True]
    assert a.keys() == b.keys() and a['error'] == b['error'] and a['status'] == b['status'] == 'FAILED'
    assert status(project, env)['served']['commands'] == 2  # --no-worker ran in its own process


def test_installing_a_distribution_restarts_the_worker_and_settings_are_read_per_command(project, tmp_path):
    site = tmp_path / 'site'
    site.mkdir()
    env = wenv(PYTHONPATH=str(site))  # a folder on sys.path, as site-packages is
    pids = []
    for change in (None, 'install', 'settings'):
        if change == 'install':  # what pip leaves in site-packages
            (site / 'newdist-1.0.dist-info').mkdir()
            (site / 'newdist-1.0.dist-info' / 'METADATA').write_text('Name: newdist\nVersion: 1.0\n')
        elif change == 'settings':
            (project / 'settings.ini').write_text('[mlops_nb]\nexperiment = other\n')
        r = mlops_nb('run', 'triv.ipynb', cwd=project, env=env)
        assert r.returncode == 0, r.stderr
        pids.append(status(project, env)['pid'])
    assert pids[0] != pids[1] == pids[2], pids  # a new distribution: a new worker; settings are each command's own
    assert f'{site} changed' in Path(status(project, env)['log']).read_text()
    from mlflow import MlflowClient
    c = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert [r.info.status for r in c.search_runs([c.get_experiment_by_name('other').experiment_id])] == ['FINISHED']


def test_a_worker_is_not_started_for_bad_input(project):
    r = mlops_nb('run', 'triv.ipynb', '-p', 'x', 'many', cwd=project, env=wenv())
    assert r.returncode == 2 and "expects float" in r.stderr
    assert not (project / '.mlops_nb').exists() and not (project / 'mlflow.db').exists()


def test_two_first_commands_at_once_start_one_worker(project):
    env = wenv()
    assert mlops_nb('run', 'triv.ipynb', '--no-worker', cwd=project, env=env).returncode == 0  # the store exists: only the worker is new
    ps = [subprocess.Popen([str(EXE), 'run', 'triv.ipynb'], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for _ in range(3)]
    for p in ps:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0 and 'y=42' in out, err
    st = status(project, env)
    assert st['served']['commands'] == 3, st  # one worker served all three: the start is taken in turns
    assert len(list(Path(st['socket']).parent.glob('*.sock'))) == 1


def test_a_recreated_virtual_environment_restarts_the_worker(project, tmp_path):
    "The interpreter's environment changes (the venv is recreated: a new pyvenv.cfg): the next command gets a new worker."
    import mlops_nb
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, capture_output=True)
    site = next(p for p in sys.path if p.endswith('site-packages') and Path(p).is_dir())
    env = wenv(PYTHONPATH=os.pathsep.join([str(Path(mlops_nb.__file__).parent.parent), site]))
    cmd = [str(venv / 'bin' / 'python'), '-c', 'import sys; from mlops_nb.cli import main; sys.exit(main())']
    pids = []
    try:
        for recreate in (False, True):
            if recreate:
                cfg = venv / 'pyvenv.cfg'
                cfg.write_text(cfg.read_text() + '# recreated\n')
            r = subprocess.run([*cmd, 'run', 'triv.ipynb'], cwd=project, env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-3000:]
            r = subprocess.run([*cmd, 'worker', 'status', '--json'], cwd=project, env=env, capture_output=True, text=True, timeout=60)
            st = json.loads(r.stdout)
            assert st['python'] == str(venv / 'bin' / 'python'), st  # this environment's own worker
            pids.append(st['pid'])
        assert pids[0] != pids[1]
        assert 'pyvenv.cfg changed' in Path(st['log']).read_text()
    finally:
        subprocess.run([*cmd, 'worker', 'stop', '--force'], cwd=project, env=env, capture_output=True, timeout=60)
