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
# Fashion-MNIST, and the libraries of opencv-python (which mmengine needs)
# that a minimal Debian lacks.
PACKAGES='dataset-fashion-mnist libgl1 libglib2.0-0 libsm6 libxext6'
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
echo "[install] done in $((SECONDS - start)) s"
