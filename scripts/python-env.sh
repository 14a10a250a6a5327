#!/usr/bin/env bash
# The Python environment the bindings build and test with: a virtual
# environment in .venv (Debian's pip refuses system-wide installs) that also
# sees the Debian packages (numpy, mpi4py), with nanobind (the binding
# library), pytest, ml_dtypes (bfloat16 for NumPy) and scikit-build-core
# (pip install .) from PyPI. Safe to run repeatedly: it installs only what is
# missing. Uses Debian's interpreter (/usr/bin/python3), not another python3 on PATH.
#   scripts/python-env.sh [VENV_DIR]      (default: .venv in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
PY_PACKAGES=(nanobind==2.9.2 pytest==8.4.2 ml_dtypes==0.5.3 scikit-build-core==0.11.6)
if [[ ! -x "$venv/bin/python" ]]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
if "$venv/bin/python" - "${PY_PACKAGES[@]}" <<'PY'
import sys
from importlib import metadata
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    try:
        if metadata.version(name) != version:
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
PY
then
  echo "python-env: $venv has ${PY_PACKAGES[*]}"
  exit 0
fi
echo "python-env: installing ${PY_PACKAGES[*]} into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
echo "python-env: done"
