#!/usr/bin/env bash
# Regenerate tests/fixtures/golden/ (tiny HF checkpoints + transformers reference outputs).
#
#   bash scripts/golden/make_fixtures.sh [--out DIR]
#
# Environment:
#   GOLDEN_VENV          venv to use/create (default: <repo>/.venv-golden)
#   GOLDEN_PYTHON        interpreter used to create the venv (default: python3)
#   GOLDEN_PIP_ARGS      extra pip arguments (e.g. a CPU-only torch index)
#   GOLDEN_SKIP_INSTALL  set to 1 to skip `pip install -r requirements.txt`
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
VENV="${GOLDEN_VENV:-$REPO_ROOT/.venv-golden}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[make_fixtures] creating venv at $VENV" >&2
    "${GOLDEN_PYTHON:-python3}" -m venv "$VENV"
fi

if [ "${GOLDEN_SKIP_INSTALL:-0}" != "1" ]; then
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
        -r "$SCRIPT_DIR/requirements.txt" ${GOLDEN_PIP_ARGS:-}
fi

cd "$REPO_ROOT"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0 \
    "$VENV/bin/python" "$SCRIPT_DIR/generate_golden.py" "$@"

OUT="$REPO_ROOT/tests/fixtures/golden"
if [ "${1:-}" = "--out" ] && [ -n "${2:-}" ]; then OUT="$2"; fi
du -sh "$OUT" >&2
