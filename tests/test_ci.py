"""Reports CI systems read: `--junit-xml` on run, sweep and pipeline run, and GitHub's step summary; as a CI job runs them."""
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from conftest import clean_env, mlops_nb


def _notebook(path, *cells, params='n: int = 3  # how many'):
    nb = new_notebook(cells=[new_code_cell(params, metadata={'tags': ['parameters']}), *map(new_code_cell, cells)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)
    return path


def _runs(d) -> dict:
    "run id -> run, of every run in `d`'s store."
    from mlops_nb.core import get_settings
    from mlops_nb.tracking import client
    c = client(get_settings(tracking_uri=f"sqlite:///{d / 'mlflow.db'}"))
    return {r.info.run_id: r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])}


def _cases(path) -> dict:
    "name -> (testcase element, its properties) of a JUnit XML file, checking the counts agree with the cases."
    root = ET.parse(path).getroot()
    assert root.tag == 'testsuites'
    [suite] = root.findall('testsuite')
    cases = {tc.get('name'): (tc, {p.get('name'): p.get('value') for p in tc.iter('property')}) for tc in suite.findall('testcase')}
    assert int(suite.get('tests')) == len(cases) == int(root.get('tests'))
    assert int(suite.get('failures')) == sum(tc.find('failure') is not None for tc, _ in cases.values())
    assert int(suite.get('skipped')) == sum(tc.find('skipped') is not None for tc, _ in cases.values())
    return cases


def test_run_writes_junit_xml_and_the_step_summary(workdir):
    ok = _notebook(workdir / 'ok.ipynb', 'import mlops_nb\nmlops_nb.record("twice", n * 2)')
    bad = _notebook(workdir / 'bad.ipynb', 'x = 1', 'raise ValueError(f"disk full after {n} rows")')
    summary = workdir / 'step_summary.md'
    summary.write_text('## an earlier step\n')
    r = mlops_nb('run', ok, bad, '-p', 'n', '4', '--junit-xml', 'reports/jobs.xml', cwd=workdir,
                 env=clean_env(GITHUB_STEP_SUMMARY=str(summary)))
    assert r.returncode == 1, r.stderr
    assert [p.name for p in (workdir / 'reports').iterdir()] == ['jobs.xml']  # written whole, no temporary file left
    cases = _cases(workdir / 'reports' / 'jobs.xml')
    assert set(cases) == {'ok.ipynb[n=4]', 'bad.ipynb[n=4]'}
    runs = _runs(workdir)
    passed, props = cases['ok.ipynb[n=4]']
    assert passed.find('failure') is None and float(passed.get('time')) > 0
    assert runs[props['run_id']].info.status == 'FINISHED' and Path(props['executed_notebook']).is_file()
    failed, props = cases['bad.ipynb[n=4]']
    f = failed.find('failure')
    assert f.get('type') == 'ValueError' and 'ValueError: disk full after 4 rows' in f.get('message')
    assert 'raise ValueError(f"disk full after {n} rows")' in f.text and 'ValueError: disk full after 4 rows' in f.text
    assert '\x1b' not in f.text  # no terminal colours in XML
    assert runs[props['run_id']].info.status == 'FAILED'
    assert Path(props['executed_notebook']).parent.name == props['run_id']

    md = summary.read_text()
    assert md.startswith('## an earlier step\n### ')  # appended, never overwritten
    assert '1 of 2 job(s) finished, 1 failed' in md
    rows = [l for l in md.splitlines() if l.startswith('| ✅') or l.startswith('| ❌')]
    assert len(rows) == 2 and 'ok.ipynb[n=4] | FINISHED' in rows[0] and 'bad.ipynb[n=4] | FAILED' in rows[1]
    assert props['run_id'] in rows[1] and 'disk full after 4 rows' in md.split('<details>')[1]


def test_a_report_path_that_cannot_be_written_is_refused_before_anything_starts(workdir):
    ok = _notebook(workdir / 'ok.ipynb', 'pass')
    (workdir / 'a_file').write_text('')
    for where, words in (('.', 'is a folder'), ('a_file/r.xml', 'is not a folder')):
        r = mlops_nb('run', ok, '--junit-xml', where, cwd=workdir)
        assert r.returncode == 2 and words in r.stderr and '--junit-xml' in r.stderr, r.stderr
    assert not (workdir / 'mlflow.db').exists()


def test_sweep_and_pipeline_write_a_case_per_job(workdir):
    _notebook(workdir / 'job.ipynb', 'if n == 2: raise RuntimeError("no two")\nimport mlops_nb\nmlops_nb.record("n", n)')
    r = mlops_nb('sweep', 'job.ipynb', '--grid', 'n=1,2,3', '--workers', '2', '--junit-xml', 'sweep.xml', cwd=workdir)
    assert r.returncode == 1, r.stderr
    cases = _cases(workdir / 'sweep.xml')
    assert set(cases) == {'job.ipynb[n=1]', 'job.ipynb[n=2]', 'job.ipynb[n=3]'}
    tc, props = cases['job.ipynb[n=2]']
    assert 'RuntimeError: no two' in tc.find('failure').get('message') and 'raise RuntimeError("no two")' in tc.find('failure').text
    assert _runs(workdir)[props['run_id']].data.tags['mlflow.parentRunId'] == props['sweep_run_id']

    (workdir / 'pipeline.yaml').write_text('name: nightly\nsteps:\n  one: {notebook: job.ipynb, parameters: {n: 1}}\n'
                                           '  two: {notebook: job.ipynb, parameters: {n: 2}, needs: [one]}\n'
                                           '  three: {notebook: job.ipynb, needs: [two]}\n')
    r = mlops_nb('pipeline', 'run', 'pipeline.yaml', '--junit-xml', 'pipeline.xml', cwd=workdir)
    assert r.returncode == 1, r.stderr
    cases = _cases(workdir / 'pipeline.xml')
    assert set(cases) == {'one: job.ipynb[n=1]', 'two: job.ipynb[n=2]', 'three: job.ipynb'}
    assert cases['one: job.ipynb[n=1]'][0].find('failure') is None
    assert 'RuntimeError: no two' in cases['two: job.ipynb[n=2]'][0].find('failure').get('message')
    assert cases['three: job.ipynb'][0].find('skipped') is not None and cases['three: job.ipynb'][0].get('classname') == 'nightly'
