"""The docs site: built by `mlops-nb docs` from this project's notebooks with a run report on a real
champion, then served over HTTP and read in headless Chromium, as a reader would."""
import json
import re
from pathlib import Path

import pytest

from browser import chromium, chromium_missing, full_screenshot, loaded_images, network_errors, out_dir, serve_dir, wait_for
from conftest import ROOT, clean_env, mlops_nb


def _title(nb: Path) -> str:
    "The page title nbdev gives a notebook: its first markdown heading."
    cell = next(c for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'markdown')
    return re.match(r'#\s+(.+)', ''.join(cell['source'])).group(1).strip()


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The site built with a report on the champion of a model trained and promoted in a scratch store."
    tmp = tmp_path_factory.mktemp('docs')
    work = tmp / 'work'
    work.mkdir()
    env = clean_env(MLFLOW_DISABLE_TELEMETRY='true')
    r = mlops_nb('run', 'train', '-p', 'n_estimators', '10', '--json', cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)['run_id']
    r = mlops_nb('promote', 'demo', '--run', run_id, cwd=work, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp / 'site'
    r = mlops_nb('docs', '--champion', 'demo', '--out', out, '--json', '--tracking-uri', f"sqlite:///{work / 'mlflow.db'}",
                 cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    return {**doc, 'out': out, 'run_id': run_id}


def test_every_notebook_is_a_page_and_the_cli_reference_is_live(site):
    from mlops_nb.cli import build_parser
    from mlops_nb.docs import _subcommands, page_name
    mods = sorted((ROOT / 'nbs').glob('[0-9]*.ipynb'))
    jobs = sorted((ROOT / 'nbs' / 'jobs').glob('*.ipynb'))
    want = {page_name(p) for p in mods} | {'jobs/' + page_name(p) for p in jobs} | {'index', 'command-line', f"runs/{site['run_id']}"}
    assert want <= set(site['pages']), want - set(site['pages'])
    for page in want:
        assert (site['out'] / f'{page}.html').exists(), page
    cli = (site['out'] / 'command-line.html').read_text()
    for name in _subcommands(build_parser()):  # every command the live parser has, docs and init included
        assert f'mlops-nb {name}' in cli, name
    assert (site['out'] / 'searchindex.js').exists()


def test_site_in_chromium(site):
    if (why := chromium_missing()):
        pytest.skip(why)
    shots = out_dir('docs')
    mods = sorted((ROOT / 'nbs').glob('[0-9]*.ipynb'))
    from mlops_nb.docs import page_name
    with serve_dir(site['out']) as url, chromium(site['out'].parent) as d:
        # the index (the README) loads, and its sidebar reaches every module page
        d.get(url + 'index.html')
        wait_for(d, 'h1', text='mlops_nb')
        wait_for(d, 'h2', text='Two commands')
        d.save_screenshot(str(shots / 'index.png'))
        links = {a.get_attribute('href') for a in d.find_elements('css selector', '.sidebar-tree a.reference')}
        for nb in mods:
            href = url + page_name(nb) + '.html'
            assert href in links, f"{href} not in the navigation"
            d.get(href)
            wait_for(d, 'article h1', text=_title(nb))
        # a code example (a cell of the core notebook) and the API reference show_doc rendered
        d.get(url + 'core.html')
        wait_for(d, 'div.highlight pre', text='test_eq(str(e)')
        wait_for(d, 'h3', text='MlopsNbError')
        # the run report: parameters, metrics, plots decoded by the browser, the executed notebook
        d.get(url + f"runs/{site['run_id']}.html")
        wait_for(d, 'h1', text='Run report')
        wait_for(d, 'table', text='n_estimators')
        wait_for(d, 'table', text='roc_auc')
        imgs = loaded_images(d)
        assert len(imgs) >= 2 and any(s.endswith('roc.png') for s in imgs), imgs  # the train job's evaluation plots
        full_screenshot(d, shots / 'run_report.png')  # tables, then the plots
        d.get(url + f"runs/{site['run_id']}-notebook.html")
        wait_for(d, 'h1', text='Executed notebook')
        assert loaded_images(d), 'the executed notebook shows its stored plot'
        # search (Sphinx's own index, in the browser) finds a function by name
        d.get(url + 'search.html?q=build_site')
        hit = wait_for(d, '#search-results li a', text='build_site', timeout=30)
        hit.click()
        wait_for(d, 'h1', text='docs')
        assert not network_errors(d), network_errors(d)
    assert (shots / 'index.png').stat().st_size > 10_000 and (shots / 'run_report.png').stat().st_size > 10_000
