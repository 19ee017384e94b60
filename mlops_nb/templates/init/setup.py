"""Packaging: metadata lives in settings.ini (nbdev 2 layout); this file reads it."""
import shlex
from configparser import ConfigParser
from pathlib import Path

import setuptools

HERE = Path(__file__).parent
config = ConfigParser(delimiters=['='])
config.read(HERE / 'settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'], author=cfg['author'],
    author_email=cfg['author_email'], url=cfg['git_url'], license='Apache-2.0',
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    install_requires=shlex.split(cfg.get('requirements', '')),
    extras_require={'dev': shlex.split(cfg.get('dev_requirements', ''))},
    python_requires='>=' + cfg['min_python'],
    entry_points={'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
