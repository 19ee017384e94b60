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
    guides = sorted((ROOT / 'nbs' / 'guides').glob('*.ipynb'))
    want = ({page_name(p) for p in mods} | {'jobs/' + page_name(p) for p in jobs} | {'guides/' + page_name(p) for p in guides}
            | {'index', 'command-line', f"runs/{site['run_id']}"})
    assert want <= set(site['pages']), want - set(site['pages'])
    for page in want:
        assert (site['out'] / f'{page}.html').exists(), page
    # the README's links to the guides (notebooks on GitHub) are links to their pages on the site
    index = (site['out'] / 'index.html').read_text()
    for p in guides:
        assert f'href="guides/{page_name(p)}.html"' in index, p.name
    assert 'href="https://github.com/mlops-nb/mlops_nb/blob/main/BENCHMARKS.md"' in index
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
        # the guides: a section of the navigation; a guide's picture of the repository is copied into the site
        for nb in sorted((ROOT / 'nbs' / 'guides').glob('*.ipynb')):
            assert url + 'guides/' + page_name(nb) + '.html' in links, f"{nb.name} not in the navigation"
        d.get(url + 'guides/monitoring.html')
        wait_for(d, 'article h1', text='Monitoring')
        assert any(s.endswith('dashboard.png') for s in loaded_images(d)), loaded_images(d)
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


def _site_pages_and_links(d, url: str, out: Path) -> dict[str, dict]:
    "Every HTML page of the built site as the browser sees it: its ids and the links (`<a href>`) on it."
    seen = {}
    for f in sorted(out.rglob('*.html')):
        page = f.relative_to(out).as_posix()
        d.get(url + page)
        seen[page] = d.execute_script(
            "return {ids: Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name')),"
            " links: Array.from(document.links).map(a => a.href), errors: []}")
        seen[page]['errors'] = network_errors(d)
    return seen


def _broken_links(seen: dict[str, dict], url: str) -> list[str]:
    "Links between pages of the site that name a missing file or anchor, one line each, as a reader would hit them."
    import urllib.error
    import urllib.parse
    import urllib.request
    bad = []
    for page, info in seen.items():
        bad += [f"{page}: {e}" for e in info['errors']]
        for href in info['links']:
            if not href.startswith(url):
                continue  # another site (GitHub, the published URL): not ours to check offline
            target, _, anchor = urllib.parse.unquote(href[len(url):]).partition('#')
            target = target.split('?')[0] or 'index.html'
            if target.endswith('/'):
                target += 'index.html'
            if target.endswith('.html'):
                if target not in seen:
                    bad.append(f"{page}: broken link {href}")
                elif anchor and anchor not in seen[target]['ids']:
                    bad.append(f"{page}: no anchor #{anchor} in {target}")
                continue
            try:
                with urllib.request.urlopen(url + target) as r:
                    assert r.status == 200
            except (urllib.error.URLError, AssertionError):
                bad.append(f"{page}: broken link {href}")
    return bad


def test_no_broken_link_on_any_page_in_chromium(site):
    "Every page of mlops_nb's own site, opened in the browser: every link to the site reaches a page and its anchor."
    from mlops_nb.docs import check_links
    assert check_links(site['out']) == []
    if (why := chromium_missing()):
        pytest.skip(why)
    with serve_dir(site['out']) as url, chromium(site['out'].parent) as d:
        d.get(url + 'docs.html')  # check_links' example shows links: as code, none of them a link
        wait_for(d, 'div.highlight pre', text='<a href="b.html#y">')
        wait_for(d, 'div.highlight pre', text='<a href="../core.html#mlops-nberror">')
        seen = _site_pages_and_links(d, url, site['out'])
    assert not [h for h in seen['docs.html']['links'] if re.search(r'/(b|c)\.html(#y)?$', h)]
    assert {'index.html', 'docs.html', 'core.html', 'command-line.html', f"runs/{site['run_id']}.html"} <= set(seen)
    assert sum(len(v['links']) for v in seen.values()) > 500  # the sidebar alone links every page from every page
    assert _broken_links(seen, url) == []


# --- any nbdev project: the fixture in tests/nbdev_project follows nbdev 2's template ---------------------------

FIXTURE = Path(__file__).parent / 'nbdev_project'


def _project(tmp: Path, name: str = 'greetings') -> Path:
    "A fresh copy of the fixture project (a git repository, as nbdev expects), outside this repository's tree."
    import shutil
    import subprocess
    p = tmp / name
    shutil.copytree(FIXTURE, p, ignore=shutil.ignore_patterns('_proc', '_docs', '__pycache__'))
    subprocess.run(['git', 'init', '-q'], cwd=p, check=True)
    return p


def _text(html_file: Path) -> str:
    "The article text of a built page."
    import html as h
    m = re.search(r'<article.*?</article>', html_file.read_text(), re.DOTALL)
    return h.unescape(re.sub(r'<[^>]+>', '', m.group(0)))


@pytest.fixture(scope='module')
def nbdev_site(tmp_path_factory):
    p = _project(tmp_path_factory.mktemp('nbdev'))
    r = mlops_nb('docs', '--json', cwd=p)
    assert r.returncode == 0, r.stdout + r.stderr
    return {**json.loads(r.stdout), 'project': p, 'out': p / '_docs'}


def test_nbdev_project_site_follows_nbdev(nbdev_site):
    "The fixture: nbformat 4.4 notebooks with ids, index.ipynb, sidebar.yml, a console script; built as nbdev_docs lays it out."
    from mlops_nb.docs import check_links
    nbs = FIXTURE / 'nbs'
    assert json.loads((nbs / '00_core.ipynb').read_text())['nbformat_minor'] == 4  # the fixture is what the issue names
    assert all('id' in c for c in json.loads((nbs / '00_core.ipynb').read_text())['cells'])
    # settings.ini doc_path (_docs); the sidebar.yml order (cli before core), the tutorials section, then the CLI page
    assert nbdev_site['pages'] == ['index', 'cli', 'core', 'tutorials/getting_started', 'command-line']
    out = nbdev_site['out']
    home = _text(out / 'index.html')
    assert 'This file will become your README' in home and 'README written by nbdev_readme' not in home  # index.ipynb, not README
    assert "'Hello Ada!'" in home
    core = _text(out / 'core.html')
    assert 'say_hello' in core and 'who to greet' in core and 'hello from the shell' in core  # show_doc, the !shell cell's output
    cli = _text(out / 'command-line.html')
    assert 'usage: greet' in cli and '--shout' in cli and 'mlops-nb' not in cli
    assert check_links(out) == []
    # cosmetic warnings: one note each, in our words, naming the pages; the build succeeded
    notes = nbdev_site['notes']
    assert any('`!shell` line' in n and n.endswith(': core') for n in notes), notes
    assert any('names no language' in n and n.endswith(': tutorials/getting_started') for n in notes), notes
    assert len(notes) == 2, notes


def test_nbdev_project_in_chromium(nbdev_site):
    if (why := chromium_missing()):
        pytest.skip(why)
    out, shots = nbdev_site['out'], out_dir('docs_nbdev')
    with serve_dir(out) as url, chromium(out.parent) as d:
        d.get(url + 'index.html')
        wait_for(d, 'article h1', text='greetings')
        wait_for(d, 'article p', text='This file will become your README')
        d.save_screenshot(str(shots / 'index.png'))
        nav = [a.get_attribute('href')[len(url):] for a in d.find_elements('css selector', '.sidebar-tree a.reference')]
        assert nav == ['cli.html', 'core.html', 'tutorials/getting_started.html', 'command-line.html'], nav
        captions = [c.text.lower() for c in d.find_elements('css selector', '.sidebar-tree p.caption')]
        assert captions == ['tutorials', 'reference'], captions  # Furo shows them in capitals
        for page, title in [('cli', 'cli'), ('core', 'core'), ('tutorials/getting_started', 'Getting started'), ('command-line', 'Command line')]:
            d.get(url + page + '.html')
            wait_for(d, 'article h1', text=title)
        wait_for(d, 'article pre', text='usage: greet')
        d.get(url + 'core.html')
        wait_for(d, 'article h2', text='say_hello')  # show_doc's heading
        wait_for(d, 'article pre', text='!echo')
        full_screenshot(d, shots / 'core.png')
        seen = _site_pages_and_links(d, url, out)
    assert {'index.html', 'cli.html', 'core.html', 'tutorials/getting_started.html', 'command-line.html'} <= set(seen)
    assert f"{url}core.html#say-hello" in seen['index.html']['links']  # nbdev's link to the published page, made local
    assert _broken_links(seen, url) == []


def test_nbdev_project_strict_and_what_fails(tmp_path):
    "--strict fails on the cosmetic warnings; without it, a link to a missing notebook and a sidebar entry for one fail (exit 1)."
    p = _project(tmp_path)
    r = mlops_nb('docs', '--strict', cwd=p)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'highlighting_failure' in r.stderr and 'core.ipynb' in r.stderr and not (p / '_docs').exists()
    nb = p / 'nbs' / '00_core.ipynb'
    doc = json.loads(nb.read_text())
    doc['cells'].append({'cell_type': 'markdown', 'id': 'broken1', 'metadata': {}, 'source': ['See [the old page](02_old.ipynb).']})
    nb.write_text(json.dumps(doc))
    r = mlops_nb('docs', cwd=p)
    assert r.returncode == 1 and '02_old' not in r.stdout, r.stdout + r.stderr
    assert 'core.ipynb' in r.stderr and 'old.ipynb' in r.stderr, r.stderr
    (p / 'nbs' / 'sidebar.yml').write_text('website:\n  sidebar:\n    contents:\n      - 00_core.ipynb\n      - 03_gone.ipynb\n')
    r = mlops_nb('docs', cwd=p)
    assert r.returncode == 1 and 'sidebar.yml lists 03_gone.ipynb' in r.stderr, r.stderr


def test_nbdev_project_without_index_or_scripts(tmp_path):
    "No index.ipynb: the README is home; no console_scripts: no command-line page; no custom sidebar: file order, folders as sections."
    p = _project(tmp_path)
    (p / 'nbs' / 'index.ipynb').unlink()
    ini = (p / 'settings.ini').read_text()
    (p / 'settings.ini').write_text(ini.replace('console_scripts = greet=greetings.cli:main\n', '').replace('custom_sidebar = True', 'custom_sidebar = False'))
    r = mlops_nb('docs', '--json', '--out', tmp_path / 'site', cwd=p)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)['pages'] == ['index', 'core', 'cli', 'tutorials/getting_started']
    assert 'README written by nbdev_readme' in _text(tmp_path / 'site' / 'index.html')
    assert not (tmp_path / 'site' / 'command-line.html').exists()


def test_two_builds_of_one_project_at_once_both_succeed(tmp_path):
    """Two `mlops-nb docs` in one project at the same time (two terminals, a CI job and a person) share `_proc/`: the
    second waits for the first's lock, says so, and both end with the whole site."""
    import subprocess
    import sys
    import threading
    import time
    p = _project(tmp_path)
    exe = Path(sys.executable).parent / 'mlops-nb'
    results = {}
    def build(name):
        results[name] = subprocess.run([str(exe), 'docs', '--out', str(tmp_path / name)], cwd=p, env=clean_env(),
                                       capture_output=True, text=True, timeout=600)
    first = threading.Thread(target=build, args=('first',))
    first.start()
    lock, end = p / '_proc' / '.build.lock', time.time() + 300
    while not (lock.exists() and lock.read_text().strip()) and first.is_alive() and time.time() < end: time.sleep(0.05)
    assert first.is_alive(), results.get('first')  # the first holds the lock: a build takes seconds
    build('second')
    first.join()
    for name, r in results.items():
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
        assert (tmp_path / name / 'core.html').exists() and (tmp_path / name / 'index.html').exists(), name
    assert 'wait for the docs build already running in this project (pid ' in results['second'].stderr, results['second'].stderr
    assert lock.read_text() == ''  # released
