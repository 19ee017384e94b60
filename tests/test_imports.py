"""Imports go down only: every module of mlops_nb, read as source (nothing is imported or run).

The layer order is the one in the design notes ("Modules"): a module may import modules of its own
layer or of lower ones, never of a higher one, and the imports form no cycle. Imports inside
functions count as much as those at the top: an import that waits until a call still makes the
lower module depend on the higher one.
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / 'mlops_nb'

# Bottom to top. The design names most modules; the others sit where what they import puts them:
# outputs (output paths, atomic publish) and procs (process utilities) import only core; ci (JUnit
# and step-summary reports) imports core and outputs; tuning (Optuna studies) and dashboard (reads
# the request log) sit beside tracking; postprocess is the design's "notebook outputs" (redaction,
# HTML render of an executed notebook), below the engine that calls it; deploy writes what serve runs;
# executors (local threads or forked processes, Dask, a Cancel passed in) imports only core.
# The command line is one layer of several modules, as DVC's and MLflow's are: cli_common (the Command record, common
# flags), then one module per group of commands (cli_jobs, cli_models, cli_monitor, cli_project), then cli (the parser
# of them all, the entry point); within the layer they import in that order, which the cycle test keeps.
# `__init__` is the lazy facade over all of them (names loaded on first use) and is not a layer.
LAYERS = [
    ['core', 'procs', 'outputs', 'executors'],
    ['params', 'data', 'features', 'train', 'evaluate', 'reqlog', 'ci'],
    ['tracking', 'sqlstore', 'models', 'registry', 'tuning', 'dashboard'],
    ['worker', 'postprocess'],
    ['engine'],
    ['jobs'],
    ['sweeps', 'pipelines', 'batch', 'serve', 'deploy', 'monitor', 'loop', 'docs', 'notebook'],
    ['cli_common', 'cli_jobs', 'cli_models', 'cli_monitor', 'cli_project', 'cli'],
]
LAYER = {m: i for i, ms in enumerate(LAYERS) for m in ms}

# Upward edges still to be fixed (none: notebook post-processing left jobs for `postprocess`, below the engine;
# the worker's edges to cli and engine are gone:
# the worker looks its operations up in worker.OPERATIONS, which cli and engine fill.)
EXPECTED_TO_BE_FIXED: set = set()


def modules() -> list[str]:
    return sorted(p.stem for p in PKG.glob('*.py') if p.stem not in ('__init__', '_modidx'))


def imports(mod: str) -> dict[str, int]:
    "The mlops_nb modules `mod` imports anywhere in its source: name -> first line."
    known, out = set(modules()), {}
    for node in ast.walk(ast.parse((PKG / f'{mod}.py').read_text(encoding='utf-8'))):
        names = []
        if isinstance(node, ast.ImportFrom):
            m = node.module or ''
            if node.level == 0 and not (m == 'mlops_nb' or m.startswith('mlops_nb.')): continue
            if node.level > 1: continue  # nothing lives above the package
            rel = m[len('mlops_nb'):].lstrip('.') if node.level == 0 else m
            names = [rel.split('.')[0]] if rel else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split('.')[1] for a in node.names if a.name.startswith('mlops_nb.')]
        for n in names:
            if n in known and n != mod: out.setdefault(n, node.lineno)
    return out


_GRAPHS = {}

def graph() -> dict[str, dict[str, int]]:
    "Module -> {module it imports: line}, read once per package folder."
    if PKG not in _GRAPHS: _GRAPHS[PKG] = {m: imports(m) for m in modules()}
    return _GRAPHS[PKG]


def test_every_module_has_a_layer():
    missing = [m for m in modules() if m not in LAYER]
    assert not missing, f"mlops_nb modules with no layer in LAYERS of {__file__}: {missing}; add each where its imports put it"


def test_imports_go_down_only():
    up = [f"{m}.py:{line} imports {n} (layer {LAYER[m]} -> {LAYER[n]})"
          for m, deps in graph().items() for n, line in sorted(deps.items())
          if LAYER[n] > LAYER[m] and (m, n) not in EXPECTED_TO_BE_FIXED]
    assert not up, "upward imports (a lower layer must take a registered callable instead):\n  " + '\n  '.join(up)


def test_expected_to_be_fixed_still_exist():
    "The list of known upward edges shrinks as they are fixed: a fixed one must leave the list."
    g = graph()
    gone = sorted(e for e in EXPECTED_TO_BE_FIXED if e[1] not in g.get(e[0], {}))
    assert not gone, f"these edges are gone; remove them from EXPECTED_TO_BE_FIXED: {gone}"


def _cycle(g: dict[str, dict[str, int]]) -> list[str] | None:
    "One cycle of `g` as a path [a, b, ..., a], or None."
    state, stack = {}, []
    def visit(m):
        state[m] = 'open'; stack.append(m)
        for n in sorted(g.get(m, {})):
            if state.get(n) == 'open': return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)): return c
        state[m] = 'done'; stack.pop()
        return None
    for m in sorted(g):
        if m not in state and (c := visit(m)): return c
    return None


def test_no_import_cycle():
    g = {m: {n: l for n, l in deps.items() if (m, n) not in EXPECTED_TO_BE_FIXED} for m, deps in graph().items()}
    c = _cycle(g)
    assert c is None, "import cycle: " + ' -> '.join(f"{a} ({a}.py:{g[a][b]})" for a, b in zip(c, c[1:])) + f" -> {c[-1]}"


def test_the_check_sees_function_level_imports(tmp_path, monkeypatch):
    "A cycle made only by imports inside functions is found, and so is an upward one."
    for name, src in {'core': 'def f():\n    from .cli import main\n', 'cli': 'from mlops_nb import core\n'}.items():
        (tmp_path / f'{name}.py').write_text(src)
    monkeypatch.setitem(globals(), 'PKG', tmp_path)
    g = graph()
    assert g == {'cli': {'core': 1}, 'core': {'cli': 2}}
    assert _cycle(g) == ['cli', 'core', 'cli']
    with pytest.raises(AssertionError, match=r"core.py:2 imports cli \(layer 0 -> 7\)"): test_imports_go_down_only()
