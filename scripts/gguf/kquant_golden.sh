#!/usr/bin/env bash
# Regenerates tests/fixtures/gguf/kquant_golden.bin: rows quantized to Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
# Q5_0 and Q5_1 by ggml's reference quantizers, compiled here from the llama.cpp sources vendored in the
# llama-cpp-python sdist (pinned in ggml_src.sh; PyPI, no build of llama.cpp itself), without
# fused multiply-adds, so the bytes do not depend on the compiler.
#
#   scripts/gguf/kquant_golden.sh            # needs cc, python3 and the network (PyPI)
#   LLAMA_CPP=/path/to/llama.cpp scripts/gguf/kquant_golden.sh   # an existing checkout instead
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=ggml_src.sh
. "$HERE/ggml_src.sh"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SRC=$(ggml_src "$WORK")
# shellcheck disable=SC2046
cc $(ggml_flags "$SRC") -c "$SRC/ggml/src/ggml-quants.c" -o "$WORK/quants.o"
# shellcheck disable=SC2046
cc $(ggml_flags "$SRC") "$HERE/kquant_golden.c" "$HERE/ggml_stubs.c" "$WORK/quants.o" -lm \
  -o "$WORK/golden"
OUT=$ROOT/tests/fixtures/gguf/kquant_golden.bin
"$WORK/golden" > "$WORK/out.bin"
mv "$WORK/out.bin" "$OUT"
echo "wrote $OUT ($(stat -c %s "$OUT") bytes)" >&2
