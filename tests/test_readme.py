"""The README is a tour: its test command is the one CI runs, and every guide it points to exists (and every guide
is pointed to). Cheap: reads files only."""
import re

from conftest import ROOT

README = (ROOT / 'README.md').read_text(encoding='utf-8')


def test_the_two_commands_are_what_ci_and_a_new_user_run():
    ci = (ROOT / '.ci' / 'run').read_text(encoding='utf-8')
    test_cmd = re.search(r'# --- the README\'s test command, verbatim ---\n(.+)\n', ci).group(1)
    blocks = re.findall(r'## Two commands\n.*?```bash\n(.+?)\n```.*?```bash\n(.+?)\n```', README, re.S)
    assert blocks == [('pip install -e ".[dev]" && mlops-nb quickstart', test_cmd)], blocks


def test_every_relative_link_resolves_and_every_guide_is_linked():
    links = re.findall(r'\]\(([^)\s#]+)(?:#[^)\s]*)?\)', README)
    local = [l for l in links if '://' not in l]
    assert [l for l in local if not (ROOT / l).exists()] == []
    guides = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / 'nbs' / 'guides').glob('*.ipynb'))
    assert len(guides) >= 10 and [g for g in guides if g not in local] == [], guides
    assert 'BENCHMARKS.md' in local
    assert len(README.splitlines()) <= 220  # a tour; reference material goes to the guides
