#!/usr/bin/env bash
# One-shot, idempotent set-up on a fresh Debian machine (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        dataset-fashion-mnist >/dev/null
fi

# torch and torchvision come from the registry as a pair; pinning torch to a
# local wheel would leave torchvision unable to import.
python -m pip install -q --disable-pip-version-check -e '.[tests]'
