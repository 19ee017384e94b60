"""mlops_nb.params from the outside: a job notebook's `parameters` cell read as a typed schema, and
command-line values checked against it before any kernel starts, with messages that say what to do."""
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from mlops_nb.core import ParameterError
from mlops_nb.params import (Param, Secret, check_params, find_parameters_cell, format_params, is_secret_name,
                             params_json, parse_param_args, read_params)

PARAMS = '''\
# data
dataset: str = "breast_cancer"      # bundled name or path to CSV/Parquet
features: list[str] = ["a", "b"]    # columns to use
weights: list[float] = [0.5, 1]

# model
model: Literal["rf", "gb"] = "rf"   # which learner
n_estimators: int = 200             # trees in the forest
max_depth: int | None = None        # None grows full trees
learning_rate: Optional[float] = 0.1
folds: Literal[3, 5, 10] = 5
ids: list[int] = []
seed: int                           # every random source is seeded from this
verbose = False                     # inferred bool
tag = "v1"                          # inferred str
extra = None                        # anything
out_dir: Path = Path("out")         # where files go
api_token: Secret = ""              # never written anywhere
db_password = "hunter2"             # secret by its name
'''


def write_nb(path, src, tagged=True):
    cells = [new_code_cell('from pathlib import Path\nfrom typing import Literal, Optional\nfrom mlops_nb import Secret'),
             new_code_cell(src, metadata={'tags': ['parameters']} if tagged else {}),
             new_code_cell('print(dataset)')]
    nbformat.write(new_notebook(cells=cells), path)
    return path


@pytest.fixture
def nb(tmp_path):
    return write_nb(tmp_path / 'train.ipynb', PARAMS)


def check(nb, pairs=(), files=(), yaml=()):
    return check_params(nb, parse_param_args(pairs, files, yaml))


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(ParameterError) as info:
        fn(*args, **kwargs)
    assert info.value.exit_code == 2
    return str(info.value)


def test_every_annotation_kind_parsed(nb):
    ps = read_params(nb)
    assert list(ps) == ['dataset', 'features', 'weights', 'model', 'n_estimators', 'max_depth', 'learning_rate', 'folds',
                        'ids', 'seed', 'verbose', 'tag', 'extra', 'out_dir', 'api_token', 'db_password']
    got = {n: (p.type, p.default, p.required, p.secret) for n, p in ps.items()}
    assert got == {
        'dataset': ('str', 'breast_cancer', False, False),
        'features': ('list[str]', ['a', 'b'], False, False),
        'weights': ('list[float]', [0.5, 1], False, False),
        'model': ('Literal["rf", "gb"]', 'rf', False, False),
        'n_estimators': ('int', 200, False, False),
        'max_depth': ('int | None', None, False, False),
        'learning_rate': ('Optional[float]', 0.1, False, False),
        'folds': ('Literal[3, 5, 10]', 5, False, False),
        'ids': ('list[int]', [], False, False),
        'seed': ('int', None, True, False),
        'verbose': ('bool', False, False, False),
        'tag': ('str', 'v1', False, False),
        'extra': ('any', None, False, False),
        'out_dir': ('Path', None, False, False),  # not a literal: kept as source text
        'api_token': ('Secret', '', False, True),
        'db_password': ('str', 'hunter2', False, True),
    }
    assert ps['out_dir'].default_src == 'Path("out")'
    assert ps['max_depth'].doc == 'None grows full trees'
    assert ps['learning_rate'].doc == ''
    assert find_parameters_cell(nbformat.read(nb, as_version=4)) == 1


GOOD = [  # (parameter, text from -p, value the kernel gets)
    ('n_estimators', '300', 300), ('n_estimators', '3.0', 3), ('n_estimators', ' -4 ', -4),
    ('learning_rate', '0.05', 0.05), ('learning_rate', '1', 1.0), ('learning_rate', 'null', None),
    ('max_depth', 'None', None), ('max_depth', 'none', None), ('max_depth', '8', 8),
    ('verbose', 'true', True), ('verbose', 'FALSE', False), ('verbose', 'yes', True), ('verbose', 'No', False),
    ('verbose', '1', True), ('verbose', '0', False),
    ('features', 'x,y', ['x', 'y']), ('features', '[x, "y z"]', ['x', 'y z']), ('features', '', []),
    ('weights', '1, 2.5', [1.0, 2.5]), ('weights', '[1, 2]', [1.0, 2.0]), ('ids', '[1,2]', [1, 2]), ('ids', '3', [3]),
    ('model', 'gb', 'gb'), ('folds', '10', 10),
    ('dataset', '2024', '2024'), ('dataset', 'none', 'none'), ('tag', 'True', 'True'),
    ('out_dir', 'runs/a', 'runs/a'), ('extra', '[1, a]', [1, 'a']), ('extra', '3', 3), ('extra', '2024-01-31', '2024-01-31'),
]


@pytest.mark.parametrize('name,text,want', GOOD)
def test_cli_text_coerced(nb, name, text, want):
    got = check(nb, [('seed', '0'), (name, text)])[name]
    assert got == want and type(got) is type(want)


BAD = [  # (parameter, text from -p, what the message says)
    ('n_estimators', '3.5', "expects int, got '3.5'"), ('n_estimators', 'many', "expects int, got 'many'"),
    ('n_estimators', 'none', "expects int, got 'none'"), ('n_estimators', '', "expects int, got ''"),
    ('max_depth', 'abc', "expects int | None, got 'abc' (from -p)"),
    ('learning_rate', 'fast', "expects Optional[float], got 'fast'"),
    ('verbose', 'maybe', "expects bool (the type of its default False), got 'maybe' (from -p): use true/false, yes/no or 1/0"),
    ('verbose', '0.5', 'expects bool (the type of its default False)'),
    ('ids', '1,x', "expects list[int], got '1,x' (from -p): item 2 ('x') is not int"),
    ('ids', '[1, 2', 'not a valid YAML/JSON list'),
    ('model', 'xgboost', "expects one of 'rf', 'gb', got 'xgboost'"),
    ('folds', '4', "expects one of 3, 5, 10, got '4'"),
]


@pytest.mark.parametrize('name,text,says', BAD)
def test_cli_text_rejected(nb, name, text, says):
    msg = error(check, nb, [('seed', '0'), (name, text)])
    assert f"Parameter '{name}' of {nb} " in msg
    assert says in msg
    assert f'See: mlops-nb params {nb}' in msg


def test_yaml_values_checked_as_values(nb, tmp_path):
    f = tmp_path / 'params.yaml'
    f.write_text('seed: 1\nlearning_rate: 1\nn_estimators: 300.0\ndataset: "none"\nfeatures: [x]\nverbose: yes\nmax_depth: null\n')
    assert check(nb, files=[f]) == {'dataset': 'none', 'features': ['x'], 'n_estimators': 300, 'max_depth': None,
                                    'learning_rate': 1.0, 'seed': 1, 'verbose': True}
    assert "expects int, got 2.5 (from -y): not a whole number" in error(check, nb, files=[f], yaml=['n_estimators: 2.5'])
    (bad := tmp_path / 'bad.yaml').write_text('seed: 1\nn_estimators: 2.5\n')
    assert f"expects int, got 2.5 (from -f {bad}): not a whole number" in error(check, nb, files=[f, bad])
    assert "expects int, got True (from -y)" in error(check, nb, yaml=['seed: true'])
    # YAML's `no` is False, not text: the user is told to quote it
    assert "Parameter 'dataset'" in (msg := error(check, nb, yaml=['seed: 1\ndataset: no']))
    assert 'got False (from -y): YAML read it as bool; quote it to pass text' in msg
    assert "expects one of 3, 5, 10, got True" in error(check, nb, yaml=['seed: 1\nfolds: true'])


def test_unknown_name_suggests_closest_and_lists_known(nb):
    msg = error(check, nb, [('seed', '0'), ('n_estimator', '300')])
    assert f"Unknown parameter 'n_estimator' for {nb} (from -p). Did you mean 'n_estimators'?" in msg
    assert 'Known: dataset, features, weights, model, n_estimators, max_depth' in msg
    assert f'See: mlops-nb params {nb}' in msg
    msg = error(check_params, nb, {'seed': 0, 'zzzz': 1})
    assert f"Unknown parameter 'zzzz' for {nb}." in msg and 'Did you mean' not in msg


def test_literal_members_keep_their_type(nb):
    got = check(nb, [('seed', '0'), ('folds', '3'), ('model', 'gb')])
    assert got['folds'] == 3 and type(got['folds']) is int and got['model'] == 'gb'
    msg = error(check, nb, [('seed', '0'), ('model', 'gbm')])
    assert "expects one of 'rf', 'gb', got 'gbm' (from -p): did you mean 'gb'?" in msg


def test_required_parameter_missing(nb):
    msg = error(check, nb, [('n_estimators', '10')])
    assert f"Missing required parameter 'seed' for {nb}" in msg
    assert '`seed: int` without a default' in msg and '-p seed VALUE' in msg


def test_all_problems_reported_at_once(nb):
    with pytest.raises(ParameterError) as info:
        check(nb, [('n_estimators', 'x'), ('modle', 'gb')])
    e = info.value
    assert str(e).startswith(f'3 problems with the parameters of {nb}:')
    assert e.names == ['modle', 'n_estimators', 'seed'] and e.path == str(nb)
    assert "Did you mean 'model'?" in str(e) and "expects int, got 'x'" in str(e) and "required parameter 'seed'" in str(e)


def test_values_come_back_in_notebook_order(nb):
    got = check(nb, [('seed', '1'), ('model', 'gb'), ('dataset', 'iris')])
    assert list(got) == ['dataset', 'model', 'seed']


def test_secret_by_type_and_by_name(nb, monkeypatch):
    ps = read_params(nb)
    assert ps['api_token'].secret and ps['db_password'].secret and not ps['dataset'].secret
    got = check(nb, [('seed', '0'), ('api_token', 'tok-123'), ('db_password', 'pw')])
    for k, v in (('api_token', 'tok-123'), ('db_password', 'pw')):
        assert isinstance(got[k], Secret) and got[k] == v and repr(got[k]) == "'***'"
    # neither a default nor a wrong value of a secret is ever shown
    table = format_params(ps)
    assert 'hunter2' not in table and '***' in table
    js = {j['name']: j for j in params_json(ps)}
    assert js['db_password']['default'] == js['db_password']['default_src'] == '***'
    msg = error(check, nb, yaml=['seed: 0\napi_token: 12345'])
    assert "Parameter 'api_token'" in msg and "got '***'" in msg and '12345' not in msg
    # the patterns: case-insensitive, replaceable through the environment
    assert [is_secret_name(n) for n in ('HF_TOKEN', 'client_secret', 'OPENAI_API_KEY', 'max_tokens')] == [True, True, True, False]
    monkeypatch.setenv('MLOPS_NB_SECRET_PATTERNS', 'dsn,*_key')
    assert is_secret_name('DSN') and is_secret_name('aws_key') and not is_secret_name('api_token')
    assert read_params(write_nb(nb.parent / 'k.ipynb', 'aws_key = ""\napi_token = ""'))['aws_key'].secret


def test_secret_value_reaches_the_kernel_through_papermill(nb):
    "papermill writes the real value into the injected cell; only repr() is masked."
    from papermill.translators import PythonTranslator
    got = check(nb, [('seed', '0'), ('api_token', 'tok"123'), ('out_dir', 'runs/a'), ('ids', '1,2')])
    ns = {}
    exec(PythonTranslator.codify(got), ns)
    assert (ns['api_token'], ns['out_dir'], ns['ids'], ns['seed']) == ('tok"123', 'runs/a', [1, 2], 0)


def test_precedence_files_then_yaml_then_p(nb, tmp_path):
    "papermill's order: -f files (in order), then -y strings, then -p pairs; the later wins."
    (tmp_path / 'a.yaml').write_text('seed: 1\nn_estimators: 10\nmodel: gb\ndataset: a\n')
    (tmp_path / 'b.yaml').write_text('n_estimators: 20\ndataset: b\n')
    vals = parse_param_args([('seed', '3')], [tmp_path / 'a.yaml', tmp_path / 'b.yaml'], ['n_estimators: 30', 'max_depth: 4'])
    assert check_params(nb, vals) == {'dataset': 'b', 'model': 'gb', 'n_estimators': 30, 'max_depth': 4, 'seed': 3}
    assert vals.sources['dataset'] == f'-f {tmp_path}/b.yaml' and vals.sources['seed'] == '-p'
    # the message says which source gave the bad value
    (tmp_path / 'c.yaml').write_text('max_depth: deep\nseed: 0\n')
    assert f"got 'deep' (from -f {tmp_path}/c.yaml)" in error(check, nb, files=[tmp_path / 'c.yaml'])


def test_bad_parameter_sources(tmp_path):
    assert 'missing.yaml does not exist' in error(parse_param_args, files=[tmp_path / 'missing.yaml'])
    assert 'Cannot read parameters from -y: ' in error(parse_param_args, yaml_strings=['a: [1'])
    assert 'must be a mapping of name: value, not a list' in error(parse_param_args, yaml_strings=['- 1'])


def test_notebook_without_parameters_cell(tmp_path):
    bare = write_nb(tmp_path / 'bare.ipynb', 'x = 1', tagged=False)
    msg = error(check_params, bare, {'x': '2'})
    assert f"{bare} has no cell tagged 'parameters'" in msg and 'papermill' in msg
    assert "no cell tagged 'parameters'" in error(read_params, bare)
    # allowed: no schema, values pass unchanged
    assert read_params(bare, allow_no_parameters=True) == {}
    assert check_params(bare, {'x': '2', 'y': [1]}, allow_no_parameters=True) == {'x': '2', 'y': [1]}
    assert check_params(bare, {'x': '2'}, params={}, allow_no_parameters=True) == {'x': '2'}
    # an empty parameters cell is a schema with no parameters: names are still checked
    empty = write_nb(tmp_path / 'empty.ipynb', '# nothing to set')
    assert 'Known: (none)' in error(check_params, empty, {'x': '2'}, allow_no_parameters=True)


def test_missing_or_broken_notebook(tmp_path):
    assert f'Notebook {tmp_path}/nope.ipynb does not exist' in error(read_params, tmp_path / 'nope.ipynb')
    (tmp_path / 'text.ipynb').write_text('print(1)')
    assert f'{tmp_path}/text.ipynb is not a Jupyter notebook' in error(read_params, tmp_path / 'text.ipynb')
    assert f'{tmp_path}/text.ipynb is not a Jupyter notebook' in error(check_params, tmp_path / 'text.ipynb', {})
    broken = write_nb(tmp_path / 'broken.ipynb', 'seed: int = = 0')
    assert f'The parameters cell of {broken} is not valid Python' in error(read_params, broken)


def test_parameters_cell_tolerates_magics_comments_and_statements(tmp_path):
    nb = write_nb(tmp_path / 'm.ipynb', '%load_ext autoreload\n\n# a comment\nimport os\nseed: int = 0  # s\nprint(seed)\n')
    ps = read_params(nb)
    assert list(ps) == ['seed'] and ps['seed'].doc == 's'


def test_format_params_table(nb):
    lines = format_params(read_params(nb)).splitlines()
    assert lines[0].split() == ['name', 'type', 'default', 'doc']
    row = {l.split()[0]: l for l in lines[1:]}
    assert row['max_depth'].split(None, 5)[1:] == ['int', '|', 'None', 'None', 'None grows full trees']
    assert 'required' in row['seed'] and '***' in row['api_token']
    assert format_params({}) == '(no parameters)'
    assert format_params({'x': Param('x', 'int', 1, '1', 'one')}).splitlines()[1].split() == ['x', 'int', '1', 'one']


def test_import_is_cheap():
    "The schema is read before any kernel starts, and kernels import it for Secret: nothing heavy comes along."
    code = ("import sys, mlops_nb.params; "
            "print(sorted(m for m in ('yaml', 'nbformat', 'mlflow', 'papermill', 'pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == '[]'


def _runs_dir_untouched(d):
    return not (d / 'mlflow.db').exists() and not (d / '.mlops_nb' / 'outputs').exists()


@pytest.mark.parametrize('flags', [[], ['--no-worker']])
def test_train_jobs_model_choices_come_from_the_registry_and_are_checked_before_launch(tmp_path, flags):
    "The train job's `model` is a Literal computed from mlops_nb.train's registry: a name it does not know starts nothing."
    from conftest import mlops_nb
    from mlops_nb.train import MODELS
    spec = {p['name']: p for p in params_json(read_params(__import__('mlops_nb.core', fromlist=['x']).job_notebook('train')))}
    assert spec['model']['choices'] == MODELS.names() and spec['model']['type'].startswith('Literal[')
    r = mlops_nb('run', 'train', '-p', 'model', 'logistic_regression', *flags, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Parameter 'model'" in r.stderr and all(repr(n) in r.stderr for n in MODELS.names()), r.stderr
    assert _runs_dir_untouched(tmp_path)


def test_a_literal_computed_from_the_projects_own_module(tmp_path):
    "A project's own registry of choices (a module next to the notebook), as its kernel would import it."
    from conftest import mlops_nb
    (tmp_path / 'palette.py').write_text('COLOURS = ("red", "green")\n')
    cells = [new_code_cell('from typing import Literal\nfrom palette import COLOURS'),
             new_code_cell('colour: Literal[COLOURS] = "red"  # a colour of the palette', metadata={'tags': ['parameters']}),
             new_code_cell('import mlops_nb\nmlops_nb.record("chosen", COLOURS.index(colour))')]
    nbformat.write(new_notebook(cells=cells), tmp_path / 'paint.ipynb')
    r = mlops_nb('run', 'paint.ipynb', '-p', 'colour', 'blue', cwd=tmp_path)
    assert r.returncode == 2 and "expects one of 'red', 'green', got 'blue'" in r.stderr, r.stdout + r.stderr
    assert _runs_dir_untouched(tmp_path)
    r = mlops_nb('run', 'paint.ipynb', '-p', 'colour', 'green', '--json', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import json
    assert json.loads(r.stdout)['metrics']['chosen'] == 1.0
