__version__ = "0.1.0"
"""mlops_nb: Jupyter-first MLOps. Notebooks hold the code, papermill runs them as jobs, MLflow tracks them.

The one hand-written file of the package (nbdev writes the rest from `nbs/`). It keeps
`import mlops_nb` cheap inside a kernel: the public names below load their module on first use.
"""

_LAZY = {
    # name: module that defines it
    'MlopsNbError': 'core', 'get_settings': 'core',
    'load_dataset': 'data', 'infer_schema': 'data', 'validate': 'data', 'fingerprint': 'data',
    'record': 'tracking', 'log_model': 'tracking', 'log_dataset': 'tracking', 'report': 'tuning',
    'Secret': 'params',
    # the notebook front end: run, sweep, list and compare runs, track the live session
    'run': 'notebook', 'sweep': 'notebook', 'pipeline': 'notebook', 'runs': 'notebook', 'compare': 'notebook', 'track': 'notebook',
    'load_ipython_extension': 'cli',  # `%load_ext mlops_nb` registers the `%mlops` magic
}

__all__ = ['__version__', *(k for k in _LAZY if k != 'load_ipython_extension')]


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'mlops_nb' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f'{__name__}.{mod}'), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
