#!/usr/bin/env bash
# Builds echo.wasm (a pier plugin written in Python) next to this script with componentize-py.
# componentize-py comes from PyPI into a virtualenv: $PIER_PY_VENV if set, else ./.venv here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wit="${PIER_WIT:-$here/../../wit}"
venv="${PIER_PY_VENV:-$here/.venv}"
version="0.25.1"

if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q "$version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$version"
fi
cd "$here"
"$venv/bin/componentize-py" -d "$wit" -w plugin componentize -p "$here" app -o "$here/echo.wasm"
