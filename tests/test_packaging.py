"""The built package: a regular (non-editable) install must carry the job notebooks, `init`'s template and the console script."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_job_notebooks_and_console_script(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (whl,) = tmp_path.glob('mlops_nb-*.whl')
    names = zipfile.ZipFile(whl).namelist()
    jobs = sorted(n for n in names if n.startswith('mlops_nb/jobs/') and n.endswith('.ipynb'))
    assert jobs == sorted(f'mlops_nb/jobs/{p.name}' for p in (ROOT / 'nbs' / 'jobs').glob('*.ipynb'))
    for job in jobs:  # the shipped copies are the literate sources, byte for byte
        assert zipfile.ZipFile(whl).read(job) == (ROOT / 'nbs' / 'jobs' / Path(job).name).read_bytes()
    tpl = ROOT / 'mlops_nb' / 'templates' / 'init'  # `mlops-nb init` copies these: every one, dotfiles included, byte for byte
    want = sorted(f"mlops_nb/templates/init/{p.relative_to(tpl).as_posix()}" for p in tpl.rglob('*') if p.is_file() and '__pycache__' not in p.parts)
    assert '.ci/run' in ' '.join(want) and len(want) >= 15, want
    assert sorted(n for n in names if n.startswith('mlops_nb/templates/')) == want
    for n in want:
        assert zipfile.ZipFile(whl).read(n) == (ROOT / n).read_bytes(), n
    ep = next(n for n in names if n.endswith('entry_points.txt'))
    assert 'mlops-nb = mlops_nb.cli:main' in zipfile.ZipFile(whl).read(ep).decode()
