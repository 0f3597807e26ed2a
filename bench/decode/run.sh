#!/usr/bin/env bash
# Greedy decoding ms/token of a random SmolLM2-135M-shaped Llama (f32, CPU), alone and as a
# two-model DeRa mixture, with dera (flex) and with PyTorch + transformers, in one run:
#
#   bench/decode/run.sh            # THREADS=2 PROMPT=32 NEW=64 REPS=3 LAYERS=30 PY=...
#
# Both sides: 32-token prompt, 64 new tokens, best of REPS runs after a warm-up, ms/token =
# decode wall time after the prefill / tokens generated. Python: $PY, else /work/.venv-golden,
# else a .venv-bench created at the repository root from requirements.txt.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-32}
NEW=${NEW:-64}
REPS=${REPS:-3}
LAYERS=${LAYERS:-30}

if [ -z "${PY:-}" ]; then
  if [ -x /work/.venv-golden/bin/python ]; then
    PY=/work/.venv-golden/bin/python
  else
    if [ ! -x "$ROOT/.venv-bench/bin/python" ]; then
      python3 -m venv "$ROOT/.venv-bench"
      "$ROOT/.venv-bench/bin/pip" install -q -r "$HERE/requirements.txt"
    fi
    PY=$ROOT/.venv-bench/bin/python
  fi
fi

(cd "$ROOT" && cargo build --release -q -p dera --example bench_decode)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bench_decode

ARGS=(--prompt "$PROMPT" --new "$NEW" --reps "$REPS" --layers "$LAYERS")
D=$(RAYON_NUM_THREADS=$THREADS "$BIN" "${ARGS[@]}")
echo "$D" | grep -v '^RESULT'
T=$(OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" "$HERE/torch_dera.py" "${ARGS[@]}" --threads "$THREADS")
echo "$T" | grep -v '^RESULT'

val() { echo "$1" | grep '^RESULT' | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; }
awk -v ds="$(val "$D" single_ms)" -v dd="$(val "$D" dera2_ms)" \
    -v ts="$(val "$T" single_ms)" -v td="$(val "$T" dera2_ms)" -v thr="$THREADS" 'BEGIN {
  printf "%-8s %14s %16s %8s   (%d threads, ms/token)\n", "", "single", "DeRa(2)", "ratio", thr
  printf "%-8s %14.2f %16.2f %8.2f\n", "dera", ds, dd, dd/ds
  printf "%-8s %14.2f %16.2f %8.2f\n", "torch", ts, td, td/ts
  printf "torch/dera: single %.2fx, DeRa(2) %.2fx\n", ts/ds, td/dd
}'
