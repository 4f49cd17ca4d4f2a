#!/usr/bin/env bash
# VNN-COMP tool interface, step 1 (run once): install perturbkit.
#   install_tool.sh v1
# Creates a virtual environment (default: <repository>/.venv; set PERTURBKIT_VENV to put it
# elsewhere, PYTHON to choose the interpreter, >= 3.10), installs perturbkit into it, and
# checks the installation on a tiny instance.
set -euo pipefail

if [ "${1:-}" != "v1" ]; then
    echo "install_tool.sh: expected the version string 'v1' as first argument, got '${1:-}'" >&2
    exit 1
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PERTURBKIT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "install_tool.sh: perturbkit needs Python >= 3.10; set PYTHON to one" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --upgrade pip
"$VENV/bin/python" -m pip install -e "$ROOT"

# smoke test: a one-neuron network whose property is unsat
DATA="$ROOT/tests/data/campaign"
VERDICT="$("$VENV/bin/python" -m perturbkit.cli.main verify "$DATA/onnx/test_nano.onnx" \
           "$DATA/vnnlib/test_nano.vnnlib" --timeout 30 | head -n 1)"
if [ "$VERDICT" != "unsat" ]; then
    echo "install_tool.sh: smoke test failed: expected unsat on test_nano, got '$VERDICT'" >&2
    exit 1
fi
echo "perturbkit installed in $VENV"
