#!/usr/bin/env bash
# One-shot, idempotent set-up on a fresh Debian machine (run as root).
# Installs into python3 from PATH, or, where PEP 668 forbids that (Debian's
# own Python outside a virtualenv), into the project's virtualenv .venv;
# see tools/python.sh. Each step is named with its time.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

step() {  # step NAME COMMAND...
    local t=$SECONDS
    echo "[install] $1 ..."
    "${@:2}"
    echo "[install] $1: done in $((SECONDS - t)) s"
}

apt_install() {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v python3 >/dev/null; then
    step 'apt: python3 python3-venv' apt_install python3 python3-venv
fi
source tools/python.sh
# Fashion-MNIST; the C compiler that builds the depthwise conv kernel at
# first use (without it training falls back to torch's several times slower
# kernel); the libraries of opencv-python (which mmengine needs) that a
# minimal Debian lacks.
PACKAGES='dataset-fashion-mnist gcc libc6-dev'
PACKAGES+=' libgl1 libglib2.0-0 libsm6 libxext6'
if dpkg -s $PACKAGES >/dev/null 2>&1; then
    echo "[install] apt: $PACKAGES: already installed"
else
    step "apt: $PACKAGES" apt_install $PACKAGES
fi
if [ "$PYTHON" = "$PWD/.venv/bin/python" ] && [ ! -x "$PYTHON" ]; then
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
        step 'apt: python3-venv' apt_install python3-venv
    fi
    step 'virtualenv .venv (PEP 668: not into the system python3)' \
        python3 -m venv .venv
fi

# torch and torchvision come from the registry as a pair; pinning torch to a
# local wheel would leave torchvision unable to import. pip reports what it
# downloads and installs; the packages already there are left unsaid.
pip_install() {
    "$PYTHON" -m pip install --disable-pip-version-check -e '.[tests]' |
        { grep -v '^Requirement already satisfied' || true; }
}
step "pip: convmixer_mm and its requirements into $PYTHON" pip_install

# OpenMMLab's mim looks for the package (and its .mim folder of configs and
# tools) beside the package's metadata, in site-packages, where pip's
# editable install (PEP 660) leaves only an import hook. Link the checkout's
# package there, as a symlink install does, and list the link in the
# install's RECORD so that `pip uninstall` removes it (not its target);
# Debian's own pip (23.0.1, in .venv) leaves it, and a new install here
# replaces it.
mim_link() {
    # -I: not the metadata that the build left in the checkout (cwd).
    "$PYTHON" -I - "$PWD/convmixer_mm" <<'PY'
import importlib.metadata
import os
import sys

dist = importlib.metadata.distribution('convmixer_mm')
link = str(dist.locate_file('convmixer_mm'))
if os.path.exists(link) and not os.path.islink(link):
    print(f'[install] {link} is the package')  # a wheel, or `develop`
else:
    if os.path.islink(link):  # left by a pip that would not remove it
        os.remove(link)
    os.symlink(sys.argv[1], link)
    record, = (f for f in dist.files if f.name == 'RECORD')
    if 'convmixer_mm' not in (f.as_posix() for f in dist.files):
        with open(record.locate(), 'a', encoding='utf-8') as f:
            f.write('convmixer_mm,,\n')
    print(f'[install] {link} -> {sys.argv[1]}')
PY
}
step 'mim: convmixer_mm beside its metadata' mim_link
echo "[install] done in $((SECONDS - start)) s"
