#!/usr/bin/env bash
# Builds echo.wasm (a pier plugin written in JavaScript) next to this script with
# componentize-js from the npm registry, installed into $PIER_JS_TOOLS if set, else here.
# wasi:http is disabled: pier does not grant it, and a plugin importing it would be refused.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wit="${PIER_WIT:-$here/../../wit}"
tools="${PIER_JS_TOOLS:-$here}"

if ! [ -x "$tools/node_modules/.bin/componentize-js" ]; then
  mkdir -p "$tools"
  cp "$here/package.json" "$tools/package.json" 2>/dev/null || true
  npm install --prefix "$tools" --no-audit --no-fund --silent
fi
"$tools/node_modules/.bin/componentize-js" "$here/echo.js" --wit "$wit" --world-name plugin \
  --disable http fetch-event -o "$here/echo.wasm"
