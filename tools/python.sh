# Sourced by the tools: sets PYTHON, the interpreter they install into and
# run. Unless PYTHON is set: python3 from PATH or, where pip may not install
# into it (PEP 668: Debian's own Python outside a virtualenv), the project's
# virtualenv .venv, which tools/install.sh creates.
if [ -z "${PYTHON:-}" ]; then
    if python3 -c 'import os, sys, sysconfig; sys.exit(
            sys.prefix == sys.base_prefix and os.path.isfile(os.path.join(
                sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        PYTHON=python3
    else
        PYTHON=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python
    fi
fi
