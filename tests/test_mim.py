# Copyright (c) convmixer_mm contributors. All rights reserved.
"""OpenMMLab's mim finds the package installed from a wheel and from an
editable install in the ``setup.py develop`` layout: ``mim list``, ``mim
search`` and ``mim train`` with one of our configs.

mim looks for a package beside its metadata (``<location>/convmixer_mm``),
which a PEP 660 editable install (pip's default, and what ``setup.py
develop`` does from setuptools 80 on) does not have; the README says so.
Each install goes into a throw-away virtualenv that sees the system
packages (torch, mmpretrain, mim) but shadows the installed convmixer_mm.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys
import venv

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        subprocess.run([sys.executable, '-c', 'import mim'],
                       capture_output=True).returncode != 0,
        reason='needs openmim (pip install -e ".[tests]"), which imports '
        'pkg_resources (setuptools<81)'),
    pytest.mark.skipif(
        not osp.isdir('/usr/share/datasets/fashion-mnist'),
        reason='needs dataset-fashion-mnist (bash tools/install.sh)'),
]


def run(python: str, *args: str, cwd: str) -> str:
    # The checkout must not be importable by path: mim has to find the
    # installed package.
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run([python, *args],
                            capture_output=True,
                            text=True,
                            cwd=cwd,
                            env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


@pytest.fixture(scope='module', params=['wheel', 'editable'])
def installed(request, tmp_path_factory):
    """The python of a virtualenv with convmixer_mm installed one way."""
    env_dir = str(tmp_path_factory.mktemp(f'venv_{request.param}'))
    # The wheel is built by the system's pip and setuptools; the editable
    # install uses the virtualenv's own setuptools (65 with Python 3.11),
    # whose develop command still writes the egg-link layout.
    venv.create(
        env_dir,
        system_site_packages=True,
        with_pip=request.param == 'editable')
    python = osp.join(env_dir, 'bin', 'python')
    # A copy: installing writes convmixer_mm/.mim and egg-info in the tree.
    src = osp.join(env_dir, 'src')
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns('.git', '.mim', '*.egg-info',
                                      '__pycache__', 'build', 'work_dirs'))
    if request.param == 'wheel':
        run(python, '-m', 'pip', 'install', '-q', '--no-deps',
            '--no-build-isolation', src, cwd=env_dir)
    else:
        version = run(python, '-c', 'import setuptools; '
                      'print(setuptools.__version__)', cwd=env_dir)
        if int(version.split('.')[0]) >= 80:
            pytest.skip(f'setuptools {version.strip()} in a new virtualenv '
                        'has no egg-link develop layout')
        run(python, 'setup.py', '-q', 'develop', '--no-deps', cwd=src)
    return python, env_dir


def test_mim_list_and_search(installed):
    python, cwd = installed
    listed = run(python, '-m', 'mim', 'list', cwd=cwd)
    assert any(line.split()[:2] == ['convmixer-mm', '0.1.0']
               for line in listed.splitlines()), listed
    found = run(python, '-m', 'mim', 'search', 'convmixer_mm', '--model',
                'convmixer-mm', cwd=cwd)
    assert 'convmixer-mm_1536-20_official-in1k' in found


def test_mim_train(installed):
    python, cwd = installed
    work_dir = osp.join(cwd, 'work')
    run(python, '-m', 'mim', 'train', 'convmixer_mm',
        'convmixer-128-4-p4_1xb128_fashion-mnist.py', '--work-dir', work_dir,
        '--cfg-options', 'train_dataloader.dataset.indices=64',
        'val_dataloader.dataset.indices=64', 'train_cfg.max_epochs=1',
        cwd=cwd)
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))
