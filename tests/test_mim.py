# Copyright (c) convmixer_mm contributors. All rights reserved.
"""OpenMMLab's mim finds the package installed from a wheel and from the
editable install that ``tools/install.sh`` makes: ``mim list``, ``mim
search convmixer_mm`` and ``mim train convmixer_mm CONFIG``.

mim looks for the package beside its metadata (``<site-packages>/
convmixer_mm/.mim``). A wheel puts it there; pip's editable install (PEP
660) leaves only an import hook, so install.sh links the checkout's package
there. Each install goes into a throw-away virtualenv that sees this
interpreter's packages (torch, mmpretrain, mim) after its own.
"""
import os
import os.path as osp
import shutil
import site
import subprocess
import sys
import venv

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PURELIB = 'import sysconfig; print(sysconfig.get_path("purelib"))'
DEBIAN_PIP = sys.base_prefix == '/usr' and osp.isdir(
    '/usr/share/python-wheels')

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        subprocess.run([sys.executable, '-c', 'import mim'],
                       capture_output=True,
                       check=False).returncode != 0,
        reason='needs openmim (pip install -e ".[tests]"), which imports '
        'pkg_resources (setuptools<81)'),
    pytest.mark.skipif(
        not osp.isdir('/usr/share/datasets/fashion-mnist'),
        reason='needs dataset-fashion-mnist (bash tools/install.sh)'),
]


def run(*args: str, cwd: str, **env: str) -> str:
    # The checkout must not be importable by path: mim has to find the
    # installed package.
    env = {**{k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}, **env}
    result = subprocess.run(args,
                            capture_output=True,
                            text=True,
                            cwd=cwd,
                            env=env,
                            check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def make_venv(env_dir: str, with_pip: bool) -> str:
    """A virtualenv that sees this interpreter's packages (torch, mim...)
    after its own, as ``--system-site-packages`` does for a base
    interpreter, also where this one runs in a virtualenv (Debian's
    ``.venv``). Returns its python."""
    venv.create(env_dir, with_pip=with_pip)
    python = osp.join(env_dir, 'bin', 'python')
    purelib = run(python, '-c', PURELIB, cwd=env_dir).strip()
    dirs = [f'site.addsitedir({d!r})' for d in site.getsitepackages()]
    with open(osp.join(purelib, 'outer_site.pth'), 'w') as f:
        f.write('; '.join(['import site', *dirs]) + '\n')
    return python


@pytest.fixture(scope='module', params=['wheel', 'editable'])
def installed(request, tmp_path_factory):
    """A virtualenv with convmixer_mm installed one way: the way, its
    python, its folder and the source tree installed from."""
    env_dir = str(tmp_path_factory.mktemp(f'venv_{request.param}'))
    python = make_venv(env_dir, with_pip=request.param == 'editable')
    # A copy: installing writes convmixer_mm/.mim and egg-info in the tree.
    # Outside the virtualenv, as a checkout is.
    src = str(tmp_path_factory.mktemp(f'src_{request.param}'))
    os.rmdir(src)
    shutil.copytree(ROOT,
                    src,
                    ignore=shutil.ignore_patterns('.git', '.mim', '*.egg-info',
                                                  '.venv', '__pycache__',
                                                  'build', 'work_dirs'))
    if request.param == 'wheel':
        # Built by this interpreter's pip and setuptools.
        pip = ['-m', 'pip', 'install', '-q', '--no-deps']
        run(python, *pip, '--no-build-isolation', src, cwd=env_dir)
    else:
        # The README's set-up, into this virtualenv: `pip install -e`, by
        # PEP 660 (pyproject.toml), then the link mim needs.
        out = run('bash', 'tools/install.sh', cwd=src, PYTHON=python)
        assert 'Building editable for convmixer_mm' in out, out
    return request.param, python, env_dir, src


def test_mim_list_and_search(installed):
    _, python, cwd, _ = installed
    listed = run(python, '-m', 'mim', 'list', cwd=cwd)
    assert any(line.split()[:2] == ['convmixer-mm', '0.1.0']
               for line in listed.splitlines()), listed
    found = run(python, '-m', 'mim', 'search', 'convmixer_mm', cwd=cwd)
    for arch in ('1536-20', '768-32', '1024-20'):
        assert f'config id: convmixer-mm_{arch}_official-in1k' in found


def test_mim_train(installed):
    way, python, cwd, src = installed
    work_dir = osp.join(cwd, 'work')
    out = run(python,
              '-m',
              'mim',
              'train',
              'convmixer_mm',
              'convmixer-128-4-p4_1xb128_fashion-mnist.py',
              '--work-dir',
              work_dir,
              '--cfg-options',
              'train_dataloader.dataset.indices=64',
              'val_dataloader.dataset.indices=64',
              'train_cfg.max_epochs=1',
              cwd=cwd)
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))
    # The editable install trains with the checkout's config, the wheel
    # with its own copy.
    config = 'configs/convmixer/convmixer-128-4-p4_1xb128_fashion-mnist.py'
    assert (f'will use {osp.realpath(osp.join(src, config))} instead'
            in out) == (way == 'editable'), out


def test_pip_uninstall(installed):
    way, python, cwd, src = installed
    run(python, '-m', 'pip', 'uninstall', '-y', 'convmixer_mm', cwd=cwd)
    purelib = run(python, '-c', PURELIB, cwd=cwd).strip()
    link = osp.join(purelib, 'convmixer_mm')
    if way == 'editable' and DEBIAN_PIP:
        # Debian's pip (its python3's ensurepip) keeps a link that leads out
        # of the virtualenv; install.sh replaces it.
        assert osp.islink(link)
        os.remove(link)
    assert not [n for n in os.listdir(purelib) if 'convmixer' in n]
    # Never what the link pointed to.
    assert osp.isfile(osp.join(src, 'convmixer_mm', '__init__.py'))
