#!/usr/bin/env bash
# Greedy decoding ms/token of random SmolLM2-shaped Llama pairs, one model and two-model DeRa,
# with dera (flex, every weight format) and with PyTorch + transformers (f32, bf16), at 1 thread
# and at all threads, against the memory-bandwidth floor measured in the same run:
#
#   bench/decode/run.sh                  # SHAPES="135m" THREADS="1 $(nproc)" PROMPT=32 NEW=64 REPS=3
#   SHAPES="135m 1.7b" bench/decode/run.sh
#
# Checkpoints are written once by make_models.py under $MODELS (default target/bench-models).
# Python: $PY, else a .venv-bench at the repository root made from requirements.txt (pinned).
# floor = weight bytes of the format / read bandwidth (1 GiB sum at that thread count), per
# token, one model or two. RSS = peak resident set of the process (both models loaded).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHAPES=${SHAPES:-135m}
THREADS=${THREADS:-"1 $(nproc)"}
PROMPT=${PROMPT:-32}
NEW=${NEW:-64}
REPS=${REPS:-3}
MODELS=${MODELS:-$ROOT/target/bench-models}
FORMATS=${FORMATS:-"f32 bf16 q8_0 q4_0"}
TORCH=${TORCH:-"f32 bf16"}

if [ -z "${PY:-}" ]; then
  if [ ! -x "$ROOT/.venv-bench/bin/python" ]; then
    python3 -m venv "$ROOT/.venv-bench"
    "$ROOT/.venv-bench/bin/pip" install -q -r "$HERE/requirements.txt"
  fi
  PY=$ROOT/.venv-bench/bin/python
fi

(cd "$ROOT" && cargo build --release -q -p dera --example bench_decode)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bench_decode
OUT=$ROOT/target/bench-decode
mkdir -p "$OUT"

val() { echo "$1" | grep '^RESULT' | tr ' ' '\n' | grep "^$2=" | cut -d= -f2; }

for shape in $SHAPES; do
  "$PY" "$HERE/make_models.py" --shape "$shape" --out "$MODELS/$shape"
  table=$OUT/$shape.md
  {
    echo "| shape | threads | engine | weights | one model ms/tok | DeRa ms/tok | DeRa / floor | DeRa vs torch same dtype | peak RSS MB |"
    echo "|---|---|---|---|---|---|---|---|---|"
  } > "$table"
  for t in $THREADS; do
    declare -A TD=()
    # torch first, so the dera rows can quote it
    for dt in $TORCH; do
      R=$(OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t "$PY" "$HERE/torch_dera.py" --ref "$MODELS/$shape/$dt/ref" \
          --aligned "$MODELS/$shape/$dt/aligned" --dtype "$dt" --threads "$t" \
          --prompt "$PROMPT" --new "$NEW" --reps "$REPS")
      echo "$R" | grep -v '^RESULT' >&2
      TD[$dt]=$(val "$R" dera2_ms)
      echo "| $shape | $t | torch | $dt | $(val "$R" single_ms) | $(val "$R" dera2_ms) | | 1.00 | $(val "$R" peak_rss_mb) |" >> "$table"
    done
    BW=$(val "$(RAYON_NUM_THREADS=$t "$BIN" --bandwidth)" bandwidth_gbps)
    for f in $FORMATS; do
      case $f in
        f32) args=(--ref "$MODELS/$shape/f32/ref" --aligned "$MODELS/$shape/f32/aligned") ;;
        bf16) args=(--ref "$MODELS/$shape/bf16/ref" --aligned "$MODELS/$shape/bf16/aligned") ;;
        *) args=(--ref "$MODELS/$shape/f32/ref" --aligned "$MODELS/$shape/f32/aligned" --quantize "$f") ;;
      esac
      R=$(RAYON_NUM_THREADS=$t "$BIN" "${args[@]}" --prompt "$PROMPT" --new "$NEW" --reps "$REPS")
      echo "$R" | grep -v '^RESULT' >&2
      bytes=$(val "$R" weight_bytes)
      d2=$(val "$R" dera2_ms)
      ref=${TD[$f]:-${TD[bf16]:-}}
      vs=$(awk -v a="$ref" -v b="$d2" 'BEGIN { if (a == "") print ""; else printf "%.2fx faster", a / b }')
      floor=$(awk -v b="$bytes" -v g="$BW" -v d="$d2" 'BEGIN { printf "%.2f (floor %.1f ms)", d / (2 * b / g / 1e6), 2 * b / g / 1e6 }')
      echo "| $shape | $t | dera | $f | $(val "$R" single_ms) | $d2 | $floor | $vs | $(val "$R" peak_rss_mb) |" >> "$table"
    done
    echo "read bandwidth at $t thread(s): $BW GB/s" >&2
    echo "| $shape | $t | read bandwidth | $BW GB/s | | | | | |" >> "$table"
  done
  cat "$table"
done
