"""Benchmark `mlops-nb docs` (mlops_nb.docs.build_site) on this project's notebooks against plain Sphinx.

Variants, measured in the same run on the same notebooks:
  peer   sphinx-build with MyST-NB (same conf.py) straight on copies of nbs/*.ipynb and nbs/jobs/*.ipynb:
         no nbdev processing, so no show_doc API reference and directives left in the code;
  cold   build_site with an empty processing cache (nbdev's processors run on every notebook);
  warm   build_site again: processed notebooks are reused, Sphinx renders every page.
Each variant runs --repeat times (default 1) in this process, one after the other; the machine may be shared.
Usage: python bench/docs.py [--repeat N]. Prints a table; exits 0.
"""
import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peer(tmp: Path):
    from mlops_nb.docs import site_notebooks, sphinx_conf
    src = tmp / 'peer_src'
    shutil.rmtree(src, ignore_errors=True)
    for _, nbs in site_notebooks(ROOT / 'nbs'):  # the sidebar's sections: nbs/ and nbs/jobs/
        for nb in nbs:
            dst = src / nb.relative_to(ROOT / 'nbs')
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(nb, dst)
    (src / 'conf.py').write_text(sphinx_conf('peer'))
    pages = [p.relative_to(src).with_suffix('').as_posix() for p in sorted(src.rglob('*.ipynb'))]
    (src / 'index.md').write_text('# peer\n\n```{toctree}\n' + '\n'.join(pages) + '\n```\n')
    out = tmp / 'peer_out'
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-d', str(tmp / 'peer_dt'), str(src), str(out)],
                   check=True, capture_output=True)


def ours(tmp: Path, cold: bool):
    from mlops_nb.docs import build_site
    if cold:
        shutil.rmtree(ROOT / '_proc', ignore_errors=True)
    build_site(ROOT, out=tmp / 'site')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeat', type=int, default=1)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='bench_docs_'))
    times = {'peer': [], 'cold': [], 'warm': []}
    for _ in range(a.repeat):
        for name, f in (('peer', lambda: peer(tmp)), ('cold', lambda: ours(tmp, True)), ('warm', lambda: ours(tmp, False))):
            t = time.perf_counter(); f(); times[name].append(time.perf_counter() - t)
    base = statistics.median(times['peer'])
    n = len(list((ROOT / 'nbs').glob('*.ipynb'))) + len(list((ROOT / 'nbs' / 'jobs').glob('*.ipynb')))
    print(f"{n} notebooks; median of {a.repeat} run(s)\n")
    print('| variant | median s | this / peer |\n|---|---:|---:|')
    labels = {'peer': 'plain sphinx-build + MyST-NB (no nbdev processing)', 'cold': 'mlops-nb docs, empty cache',
              'warm': 'mlops-nb docs, processed notebooks cached'}
    for k in ('peer', 'cold', 'warm'):
        m = statistics.median(times[k])
        print(f"| {labels[k]} | {m:.1f} | {m / base:.2f}x |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
