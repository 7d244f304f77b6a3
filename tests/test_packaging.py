# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Configs and tools ship inside the package (mmpretrain's .mim layout)."""
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest

import convmixer_mm

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PKG = osp.dirname(convmixer_mm.__file__)


def test_editable_install_links_configs_and_tools():
    mim = osp.join(PKG, '.mim')
    if osp.realpath(PKG) != osp.realpath(osp.join(REPO, 'convmixer_mm')):
        pytest.skip('convmixer_mm is not installed from this checkout')
    for name in ('configs', 'tools', 'demo'):
        assert osp.samefile(osp.join(mim, name), osp.join(REPO, name))
    assert osp.isfile(osp.join(mim, 'tools', 'install.sh'))


def test_wheel_carries_configs_and_tools(tmp_path):
    src = tmp_path / 'src'
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns('.git', '.mim', '*.egg-info', 'build',
                                      'work_dirs', '__pycache__'))
    subprocess.run([
        sys.executable, '-m', 'pip', 'wheel', '--no-deps',
        '--no-build-isolation', '-q', '-w',
        str(tmp_path / 'dist'),
        str(src)
    ],
                   check=True)
    wheel, = (tmp_path / 'dist').glob('convmixer_mm-*.whl')
    names = set(zipfile.ZipFile(wheel).namelist())
    assert 'convmixer_mm/models/convmixer.py' in names
    assert 'convmixer_mm/models/ops/dwconv.c' in names
    assert 'convmixer_mm/.mim/tools/run_tests.sh' in names
    shipped = {n for n in names if n.startswith('convmixer_mm/.mim/configs/')}
    in_repo = {
        'convmixer_mm/.mim/' + osp.relpath(osp.join(d, f), REPO)
        for d, _, files in os.walk(osp.join(REPO, 'configs'))
        for f in files if not f.endswith('.pyc')
    }
    assert in_repo and in_repo <= shipped
