"""Packaging for mlops_nb. Metadata lives in settings.ini (nbdev 2 layout); this file reads it.

The job notebooks are written in `nbs/jobs/` (the literate source). A regular (non-editable) build
copies them into the wheel as `mlops_nb/jobs/*.ipynb`; an editable install finds them in `nbs/jobs/`
at run time (see `mlops_nb.core.job_notebook`).
"""
import shlex
import shutil
from configparser import ConfigParser
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
config = ConfigParser(delimiters=['='])
config.read(HERE / 'settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

expected = 'version description keywords author author_email lib_name user license status min_python audience language'.split()
for o in expected:
    assert o in cfg, f"settings.ini is missing the setting {o!r}"

licenses = {'apache2': 'Apache-2.0'}  # SPDX expression (license classifiers are deprecated)
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()
lic = licenses.get(cfg['license'].lower(), cfg['license'])
min_python = cfg['min_python']

requirements = shlex.split(cfg.get('requirements', ''))
extras = {'dev': shlex.split(cfg.get('dev_requirements', ''))}
# Optional capabilities: `extra_NAME = pkg pkg ...` in settings.ini becomes `pip install mlops_nb[NAME]`.
for key in cfg:
    if key.startswith('extra_'):
        extras[key[len('extra_'):]] = shlex.split(cfg[key])
extras['dev'] = sorted(set(extras['dev']).union(*[v for k, v in extras.items() if k != 'dev']))


class BuildPyWithJobs(build_py):
    "Copy the job notebooks from nbs/jobs into the built package."

    def run(self):
        super().run()
        src = HERE / 'nbs' / 'jobs'
        if getattr(self, 'editable_mode', False) or not src.is_dir():
            return
        dest = Path(self.build_lib) / cfg['lib_path'] / 'jobs'
        dest.mkdir(parents=True, exist_ok=True)
        for nb in sorted(src.glob('*.ipynb')):
            shutil.copy2(nb, dest / nb.name)


setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=lic,
    classifiers=[
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'Natural Language :: ' + cfg['language'].title(),
    ] + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require=extras,
    python_requires='>=' + min_python,
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    zip_safe=False,
    cmdclass={'build_py': BuildPyWithJobs},
    entry_points={
        'console_scripts': cfg.get('console_scripts', '').split(),
        'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
        'papermill.engine': ['mlops_nb = mlops_nb.engine:FastEngine'],  # `papermill --engine mlops_nb`
    },
)
