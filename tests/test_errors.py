"""The error map holds: every error class of the package is defined in `core` (the one place users look), and
every broad `except Exception` / `except BaseException` says in a comment why it must be broad. Reads the
source (no imports), so it costs well under a second."""
import ast
import re
from pathlib import Path

import mlops_nb.core as core

PKG = Path(core.__file__).parent
MODULES = sorted(p for p in PKG.glob('*.py') if p.name not in ('_modidx.py', '__init__.py'))


def _error_names() -> set:
    "Names of every exception class: builtins, and core's own."
    import builtins
    names = {n for n, o in vars(builtins).items() if isinstance(o, type) and issubclass(o, BaseException)}
    return names | {n for n, o in vars(core).items() if isinstance(o, type) and issubclass(o, BaseException)}


def test_every_error_class_is_defined_in_core():
    errors, outside = _error_names(), []
    for p in MODULES:
        if p.name == 'core.py': continue
        for node in ast.parse(p.read_text(encoding='utf-8')).body:  # module level: a class local to one function is its own business
            if isinstance(node, ast.ClassDef) and not node.name.startswith('_'):
                bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else '' for b in node.bases}
                if bases & errors: outside.append(f'{p.name}:{node.lineno} {node.name}')
    assert not outside, f"error classes outside core (define them in nbs/00_core.ipynb, import them here): {outside}"


def test_old_import_paths_still_work():
    from mlops_nb.batch import BadRows
    from mlops_nb.models import ModelError
    from mlops_nb.serve import RequestError, ShapeError
    from mlops_nb.sweeps import EXECUTORS, SweepInterrupted
    from mlops_nb.engine import CellTimeoutError
    from mlops_nb.tuning import TrialPruned
    from mlops_nb import executors
    assert (BadRows, ModelError, RequestError, ShapeError, SweepInterrupted, CellTimeoutError, TrialPruned) == (
        core.BadRows, core.ModelError, core.RequestError, core.ShapeError, core.SweepInterrupted, core.CellTimeoutError, core.TrialPruned)
    assert EXECUTORS is executors.EXECUTORS
    assert all(issubclass(c, core.MlopsNbError) for c in (BadRows, ModelError, RequestError, ShapeError, CellTimeoutError, TrialPruned))
    assert not issubclass(SweepInterrupted, Exception)  # Ctrl-C passes every `except Exception`


def _broad(handler: ast.ExceptHandler) -> bool:
    "A bare `except:`, or one that catches Exception or BaseException."
    t = handler.type
    kinds = t.elts if isinstance(t, ast.Tuple) else [t]
    return t is None or any(isinstance(k, ast.Name) and k.id in ('Exception', 'BaseException') for k in kinds)


def test_every_broad_except_says_why():
    silent = []
    for p in MODULES:
        text = p.read_text(encoding='utf-8')
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ExceptHandler) and _broad(node) and 'broad' not in lines[node.lineno - 1]:
                silent.append(f'{p.name}:{node.lineno}: {lines[node.lineno - 1].strip()}')
    assert not silent, "a broad except must say why in a comment ('# broad: ...'), or catch what it means:\n" + '\n'.join(silent)
