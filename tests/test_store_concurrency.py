"""Many processes writing to one default SQLite store at once, as a sweep's jobs do: nothing lost, no "database is locked"."""
import multiprocessing as mp
import subprocess
import sys

PROCS, RUNS, STEPS = 8, 2, 50  # per process: 2 runs, 200 log_batch + set_tag calls, params, artifacts


def _value(proc: int, run: int, step: int) -> float: return proc * 1000 + run * 100 + step / 64  # exact in binary


def _job(d: str, proc: int, ready, go, out):
    "One job process: RUNS runs, each STEPS x (record two metrics, flush them, set a tag), an artifact, end."
    import logging

    locked = []  # MLflow logs every OperationalError it turns into MlflowException, including ones a retry then hides

    class Seen(logging.Handler):
        def emit(self, record):
            if 'database is locked' in record.getMessage() or 'database is locked' in str(record.exc_info and record.exc_info[1]):
                locked.append(record.getMessage()[:200])

    from mlops_nb.core import get_settings
    from mlops_nb.tracking import create_run
    logging.getLogger('mlflow').addHandler(Seen())
    s = get_settings(cwd=d, env={})
    ready.put(proc)
    go.wait()
    errors, run_ids = [], []
    try:
        for r in range(RUNS):
            run = create_run(settings=s, run_name=f'p{proc}-r{r}', params={'proc': proc, 'run': r}, seed=r)
            run_ids.append(run.run_id)
            for step in range(STEPS):
                run.record('loss', _value(proc, r, step), step=step)
                run.record('metrics', {'acc': _value(proc, r, step) + 0.5})
                run.flush()  # a log_batch per step: what a job that flushes after every cell sends
                run.client.set_tag(run.run_id, 'last_step', str(step))
            run.log_text(f'{proc}-{r}', 'note.txt')
            run.end()
    except Exception as e:
        errors.append(f'{type(e).__name__}: {e}')
    out.put(dict(proc=proc, run_ids=run_ids, errors=errors, locked=locked))


def test_concurrent_jobs_lose_nothing_and_never_see_database_is_locked(tmp_path):
    ctx = mp.get_context('spawn')
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_job, args=(str(tmp_path), i, ready, go, out)) for i in range(PROCS)]
    for p in ps: p.start()
    try:
        for _ in ps: ready.get(timeout=120)
        go.set()  # all together, on a store none of them has created yet
        res = sorted((out.get(timeout=300) for _ in ps), key=lambda r: r['proc'])
    finally:
        for p in ps: p.join(timeout=60)
        for p in ps:
            if p.is_alive(): p.kill()
    assert [r['errors'] for r in res] == [[]] * PROCS
    assert [r['locked'] for r in res] == [[]] * PROCS

    from mlflow import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id], max_results=1000)]
    assert len(runs) == PROCS * RUNS == sum(len(r['run_ids']) for r in res)
    for r in res:
        for k, rid in enumerate(r['run_ids']):
            run = c.get_run(rid)
            assert run.info.status == 'FINISHED'
            assert (run.data.params['proc'], run.data.params['run']) == (str(r['proc']), str(k))
            assert run.data.tags['last_step'] == str(STEPS - 1)
            hist = sorted((m.step, m.value) for m in c.get_metric_history(rid, 'loss'))
            assert hist == [(i, _value(r['proc'], k, i)) for i in range(STEPS)]
            acc = sorted((m.step, m.value) for m in c.get_metric_history(rid, 'metrics.acc'))
            assert acc == [(i, _value(r['proc'], k, i) + 0.5) for i in range(STEPS)]
            assert {a.path for a in c.list_artifacts(rid)} == {'environment.txt', 'note.txt'}


def test_a_write_waits_while_another_process_holds_the_write_lock(tmp_path):
    "What keeps writers apart is the lock file next to the db: a write made while another process holds it lands after."
    from mlops_nb.core import get_settings
    from mlops_nb.tracking import create_run
    run = create_run(settings=get_settings(cwd=tmp_path, env={}))
    marker = tmp_path / 'released'
    holder = subprocess.Popen([sys.executable, '-c', (
        "import fcntl, pathlib, sys, time\n"
        f"f = open({str(tmp_path / 'mlflow.db.write.lock')!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(1)\n"
        f"pathlib.Path({str(marker)!r}).write_text('x'); fcntl.flock(f, fcntl.LOCK_UN)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        run.client.set_tag(run.run_id, 'after', 'yes')
        assert marker.exists()  # the holder wrote it just before letting go
    finally:
        holder.wait(timeout=30)
    run.end()
    assert run.client.get_run(run.run_id).data.tags['after'] == 'yes'
