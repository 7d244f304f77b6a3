# Copyright (c) convmixer_mm contributors. All rights reserved.
"""tools/python.sh: the interpreter that tools/install.sh installs into
and the other tools run, with Debian's own Python (PEP 668) and without."""
import os
import os.path as osp
import subprocess
import sys
import sysconfig

import pytest

ROOT = osp.abspath(osp.join(osp.dirname(osp.abspath(__file__)), '..'))
DEBIAN_PYTHON = '/usr/bin/python3'


def chosen(path: str) -> str:
    """``$PYTHON`` after sourcing tools/python.sh with ``PATH=path``."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
    env['PATH'] = path
    return subprocess.run(
        ['/bin/bash', '-c', 'source tools/python.sh && echo "$PYTHON"'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True).stdout.strip()


def externally_managed(python: str) -> bool:
    return subprocess.run([
        python, '-c', 'import os, sys, sysconfig; sys.exit(not os.path.isfile('
        'os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'
    ]).returncode == 0


@pytest.mark.skipif(
    not (osp.isfile(DEBIAN_PYTHON) and externally_managed(DEBIAN_PYTHON)),
    reason=f'needs an externally managed (PEP 668) {DEBIAN_PYTHON}')
def test_debian_python_gets_the_project_venv(tmp_path):
    # Debian's python3 alone on PATH: pip may not install into it.
    assert chosen('/usr/bin:/bin') == osp.join(ROOT, '.venv', 'bin',
                                               'python')
    # A virtualenv made from it, active (first on PATH): used as it is.
    venv = tmp_path / 'venv'
    subprocess.run([DEBIAN_PYTHON, '-m', 'venv', '--without-pip',
                    str(venv)],
                   check=True)
    assert chosen(f'{venv}/bin:/usr/bin:/bin') == 'python3'


@pytest.mark.skipif(
    sys.prefix == sys.base_prefix and osp.isfile(
        osp.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')),
    reason='this interpreter is externally managed')
def test_installable_python3_is_used_as_it_is(tmp_path):
    # python3 first on PATH runs this test's interpreter (pyenv, a venv...).
    python3 = tmp_path / 'python3'
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python3.chmod(0o755)
    assert chosen(f'{tmp_path}:/usr/bin:/bin') == 'python3'
