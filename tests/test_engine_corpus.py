"""The fast engine gives the outputs papermill's kernel engine gives: the same notebooks through both, compared.

This corpus is the gate for `fast` being the default engine: streams, display data, execute results,
errors, execution counts, cell tags and papermill metadata must match. What legitimately differs is
normalised and listed here: timestamps and durations, the traceback body (a kernel names a cell
`/tmp/ipykernel_PID/N.py`, IPython's shell `<ipython-input-N-HASH>`: names are replaced, and only
the traceback's last line is compared),
PNG bytes (compared as present, not byte for byte) and `language_info.version`.
"""
import json
import os
import re
import shutil

import nbformat
import papermill as pm
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from conftest import ROOT

PARAMS = new_code_cell('n: int = 2\nname: str = "x"', metadata={'tags': ['parameters']})

CORPUS = {
    'streams': ['print("out"); import sys; print("err", file=sys.stderr); print("out again")',
                'for i in range(n): print(i)', 'import sys; sys.stdout.write("no newline")'],
    'values': ['n * 21', '{"a": [1, 2], "name": name}', 'None', 'x = 5', 'x;', '"text" if n else None'],
    'display': ['from IPython.display import display, HTML, Markdown, JSON\ndisplay(HTML("<b>bold</b>")); display(Markdown("*m*"))',
                'display({"k": 1}, raw=False)\nprint("between")\ndisplay(JSON({"a": 1}))',
                'h = display(HTML("first"), display_id=True)\nh.update(HTML("second"))',
                'from IPython.display import clear_output\nprint("gone"); clear_output()\nprint("kept")'],
    'frames': ['import pandas as pd\ndf = pd.DataFrame({"a": range(n), "b": list("xy")[:n]})\ndf',
               'df.describe()', 'df.style.format("{:.1f}", subset=["a"]) if False else df.a'],
    'plots': ['import matplotlib.pyplot as plt\nplt.plot(range(n)); plt.title(name); plt.show()',
              'fig, ax = plt.subplots(); ax.bar([1, 2], [3, 4])',  # shown by the inline backend at the end of the cell
              'plt.close("all")\n42'],
    'magics': ['%env CORPUS_FLAG=1', '%%capture cap\nprint("captured")', 'print(cap.stdout.strip())', '!echo from shell',
               'import warnings\nwarnings.warn("careful")'],
    'tags': [new_code_cell('1 / 0', metadata={'tags': ['raises-exception']}), new_code_cell('print("after an allowed error")'),
             new_code_cell('print("skipped")', metadata={'tags': ['skip-execution']}), new_code_cell(''), new_markdown_cell('# md'),
             new_code_cell('n')],
    'error': ['a = n + 1', 'print("before"); raise ValueError(f"bad value {a}")', 'print("never")'],
    'syntax': ['x = 1', 'def broken(:\n    pass', 'print("never")'],
    'exit0': ['print("bye")', 'import sys; sys.exit(0)'],
}

ANSI = re.compile(r'\x1b\[[0-9;]*m')
CELL_FILE = re.compile(r'(/tmp/ipykernel_\d+/\d+\.py|\b\d+\.py\b|<ipython-input-\d+-[0-9a-f]+>|Cell In\[\d+\], line \d+)')


def _notebook(path, cells):
    nb = new_notebook(cells=[PARAMS] + [c if isinstance(c, dict) else new_code_cell(c) for c in cells])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)


def _output(o):
    t = o['output_type']
    if t == 'stream': return ['stream', o['name'], CELL_FILE.sub('<cell>', o['text'])]
    if t == 'error':
        last = ANSI.sub('', o['traceback'][-1]).strip().splitlines()[-1] if o['traceback'] else ''
        return ['error', o['ename'], CELL_FILE.sub('<cell>', o['evalue']), CELL_FILE.sub('<cell>', last)]
    data = {k: ('<png>' if k == 'image/png' else v) for k, v in o['data'].items()}
    if 'text/plain' in data: data['text/plain'] = re.sub(r' at 0x[0-9a-f]+', ' at 0x?', data['text/plain'])
    return [t, data, o.get('execution_count')]


def _merge(outs):
    merged = []
    for o in map(_output, outs):
        if merged and o[0] == 'stream' and merged[-1][0] == 'stream' and merged[-1][1] == o[1]: merged[-1][2] += o[2]
        else: merged.append(o)
    return merged


def _normal(path):
    nb = nbformat.read(path, as_version=4)
    pm_meta = nb.metadata['papermill']
    cells = []
    for c in nb.cells:
        meta = c.metadata.get('papermill', {})
        cells.append({'type': c.cell_type, 'tags': c.metadata.get('tags', []), 'source': c.source,
                      'status': meta.get('status'), 'exception': meta.get('exception'),
                      'count': c.get('execution_count'), 'outputs': _merge(c.get('outputs', []))})
    return {'parameters': pm_meta['parameters'], 'exception': pm_meta.get('exception'),
            'language': nb.metadata.get('language_info', {}).get('name'), 'cells': cells}


VALUES = {'n': 3, 'name': 'corpus'}


def _run_kernel(src, out):
    "Plain papermill with its default engine: a Jupyter kernel."
    try:
        pm.execute_notebook(str(src), str(out), parameters=VALUES, progress_bar=False, cwd=str(src.parent))
        return None
    except pm.PapermillExecutionError as e:
        return (e.cell_index, e.exec_count, e.ename, e.evalue)


def _run_fast(src, out):
    "What `mlops-nb run` does: papermill's parameterisation, the `mlops_nb` engine, in a process forked from the warm worker."
    from mlops_nb.engine import execute
    from mlops_nb.jobs import prepare_notebook
    nb, _ = prepare_notebook(src, VALUES, set())
    ex = execute(dict(nb=nb, input=str(src), output=str(out), cwd=str(src.parent), env=dict(os.environ),
                      papermill_engine='mlops_nb', html=False))
    if ex.status == 'ok': return None
    e = ex.error
    return (e['cell'], e['execution_count'], e['ename'], e['evalue'])


@pytest.mark.parametrize('name', sorted(CORPUS))
def test_fast_engine_gives_papermills_outputs(name, tmp_path):
    src = tmp_path / f'{name}.ipynb'
    _notebook(src, CORPUS[name])
    raised_pm = _run_kernel(src, tmp_path / 'kernel.ipynb')
    raised_fast = _run_fast(src, tmp_path / 'fast.ipynb')
    norm = lambda r: r and (*r[:3], CELL_FILE.sub('<cell>', r[3]))
    assert norm(raised_fast) == norm(raised_pm)
    kernel, fast = _normal(tmp_path / 'kernel.ipynb'), _normal(tmp_path / 'fast.ipynb')
    assert fast['parameters'] == kernel['parameters'] == {'n': 3, 'name': 'corpus'}
    assert fast['language'] == kernel['language'] == 'python'
    for i, (k, f) in enumerate(zip(kernel['cells'], fast['cells'])):
        assert f == k, f"cell {i} differs:\nkernel: {json.dumps(k, indent=1)}\nfast:   {json.dumps(f, indent=1)}"
    assert len(fast['cells']) == len(kernel['cells'])


def test_bundled_train_job_gives_the_same_notebook_through_both_engines(tmp_path):
    "The real job notebook, outside a job (no MLflow run): same metrics, same printed lines, same outputs' shapes."
    src = tmp_path / 'train.ipynb'
    shutil.copy(ROOT / 'nbs' / 'jobs' / 'train.ipynb', src)
    for engine, out in ((None, 'kernel.ipynb'), ('mlops_nb', 'fast.ipynb')):  # here both through papermill's own API
        pm.execute_notebook(str(src), str(tmp_path / out), parameters={'n_estimators': 10, 'dataset': 'iris'},
                            engine_name=engine, progress_bar=False, cwd=str(tmp_path))
    kernel, fast = _normal(tmp_path / 'kernel.ipynb'), _normal(tmp_path / 'fast.ipynb')
    for k, f in zip(kernel['cells'], fast['cells']):
        # the fitted pipeline's HTML repr carries random element ids: compare its text form only
        for outs in (k['outputs'], f['outputs']):
            for o in outs:
                if o[0] != 'stream' and o[0] != 'error': o[1].pop('text/html', None)
        assert f == k


def test_plain_papermill_users_get_the_engine_by_name(tmp_path):
    "Installed with mlops_nb, the engine is registered under papermill's entry point: `papermill --engine mlops_nb`."
    import subprocess, sys
    from pathlib import Path
    src = tmp_path / 'p.ipynb'
    _notebook(src, ['print(f"n is {n}")', 'n * 10'])
    r = subprocess.run([str(Path(sys.executable).parent / 'papermill'), str(src), str(tmp_path / 'out.ipynb'), '-p', 'n', '4',
                        '--engine', 'mlops_nb', '--no-progress-bar'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cells = _normal(tmp_path / 'out.ipynb')['cells']
    assert cells[-2]['outputs'] == [['stream', 'stdout', 'n is 4\n']]
    assert cells[-1]['outputs'] == [['execute_result', {'text/plain': '40'}, cells[-1]['count']]]
