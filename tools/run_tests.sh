#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
source tools/python.sh
"$PYTHON" -m pytest tests -q -p no:cacheprovider "$@"
