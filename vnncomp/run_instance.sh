#!/usr/bin/env bash
# VNN-COMP tool interface, step 3 (timed):
#   run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Runs `perturbkit verify ONNX VNNLIB --timeout TIMEOUT --out RESULTS_FILE`, which writes
# the result file: `sat` and the counterexample ((X_0 v) ... (Y_0 v) ...), or `unsat`,
# `unknown` or `timeout`. The verifier answers by TIMEOUT + 1 s on its own; as a backstop
# the process is stopped by coreutils `timeout` (by process id) at TIMEOUT + 10 s, and the
# result file then reads `timeout`. If perturbkit refuses the instance (an unsupported
# operator, a malformed property, ...), its one-line reason goes to stderr and the result
# file reads `error`.
#
# Exit code: perturbkit's (0 for any verdict, 2 for a refused instance); 0 when the backstop
# fired.
set -uo pipefail

if [ "${1:-}" != "v1" ]; then
    echo "run_instance.sh: expected the version string 'v1' as first argument, got '${1:-}'" >&2
    exit 1
fi
if [ "$#" -ne 6 ]; then
    echo "usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2
    exit 1
fi
CATEGORY="$2"   # no per-category settings (yet)
ONNX="$3"
VNNLIB="$4"
RESULTS="$5"
TIMEOUT="$6"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PERTURBKIT_VENV:-$ROOT/.venv}"

# a result file left from an earlier run must not pass for this run's
rm -f "$RESULTS"

HARD_LIMIT="$(awk -v t="$TIMEOUT" 'BEGIN { if (t + 0 > 0) printf "%d", t + 10; else print "" }')"
if [ -z "$HARD_LIMIT" ]; then
    echo "run_instance.sh: TIMEOUT must be a number of seconds > 0, got '$TIMEOUT'" >&2
    echo "error" > "$RESULTS"
    exit 2
fi

echo "perturbkit: $CATEGORY instance $(basename "$ONNX") / $(basename "$VNNLIB"), timeout $TIMEOUT s" >&2
timeout --kill-after=5 "$HARD_LIMIT" \
    "$VENV/bin/python" -m perturbkit.cli.main verify "$ONNX" "$VNNLIB" --timeout "$TIMEOUT" --out "$RESULTS"
CODE=$?

if [ "$CODE" -eq 124 ] || [ "$CODE" -eq 137 ]; then   # the backstop stopped it
    [ -s "$RESULTS" ] || echo "timeout" > "$RESULTS"
    exit 0
fi
if [ "$CODE" -ne 0 ] && [ ! -s "$RESULTS" ]; then
    echo "error" > "$RESULTS"
fi
exit "$CODE"
