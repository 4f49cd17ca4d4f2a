#!/usr/bin/env bash
# VNN-COMP tool interface, step 2 (before each instance, untimed):
#   prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Checks the arguments and that the files exist, then warms the file cache by importing
# perturbkit once (so the timed run starts faster). No analysis happens here.
#
# Nothing needs killing between instances: run_instance.sh bounds the lifetime of the one
# process it starts (coreutils timeout, by process id), so no process outlives its instance.
set -euo pipefail

if [ "${1:-}" != "v1" ]; then
    echo "prepare_instance.sh: expected the version string 'v1' as first argument, got '${1:-}'" >&2
    exit 1
fi
if [ "$#" -ne 4 ]; then
    echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2
    exit 1
fi
CATEGORY="$2"
ONNX="$3"
VNNLIB="$4"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PERTURBKIT_VENV:-$ROOT/.venv}"

for f in "$ONNX" "$VNNLIB"; do
    if [ ! -f "$f" ]; then
        echo "prepare_instance.sh: $f not found" >&2
        exit 1
    fi
done
if [ ! -x "$VENV/bin/python" ]; then
    echo "prepare_instance.sh: no perturbkit installation in $VENV; run install_tool.sh v1 first" >&2
    exit 1
fi

"$VENV/bin/python" -c 'import perturbkit.verify.runner, perturbkit.cli.verify_cmd' >/dev/null
echo "prepared $CATEGORY instance $(basename "$ONNX") / $(basename "$VNNLIB")"
exit 0
