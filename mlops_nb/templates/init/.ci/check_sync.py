"""Exit 1 when notebooks are not clean (nbdev_clean) or __PKG__/ is not in sync with nbs/ (nbdev_export)."""
import subprocess, sys
from pathlib import Path

def snapshot():
    return {p: p.read_bytes() for d in ('nbs', '__PKG__') for p in Path(d).rglob('*')
            if p.is_file() and '__pycache__' not in p.parts and '.ipynb_checkpoints' not in p.parts}

before = snapshot()
for cmd in ('nbdev_clean', 'nbdev_export'):
    subprocess.run([cmd], check=True)
after = snapshot()
changed = sorted(str(p) for p in before.keys() | after.keys() if before.get(p) != after.get(p))
if changed:
    print("not clean or not in sync (now fixed in place; commit the result):\n  " + "\n  ".join(changed), file=sys.stderr)
    sys.exit(1)
print("notebooks clean, package in sync")
