#!/usr/bin/env bash
# Regenerates tests/fixtures/gguf/kquant_golden.bin: rows quantized to Q4_K, Q5_K, Q6_K, Q5_0 and
# Q5_1 by ggml's reference quantizers, compiled here from the llama.cpp sources vendored in the
# llama-cpp-python sdist (pinned below; PyPI, no build of llama.cpp itself). IEEE arithmetic
# without contraction (-ffp-contract=off, no -march), so the bytes do not depend on the compiler's
# choice of fused multiply-adds.
#
#   scripts/gguf/kquant_golden.sh            # needs cc, python3 and the network (PyPI)
#   LLAMA_CPP=/path/to/llama.cpp scripts/gguf/kquant_golden.sh   # an existing checkout instead
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=0.3.36
URL=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$VERSION.tar.gz
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -z "${LLAMA_CPP:-}" ]; then
  python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
    "$URL" "$WORK/sdist.tar.gz"
  echo "$SHA256  $WORK/sdist.tar.gz" | sha256sum -c - >&2
  tar xzf "$WORK/sdist.tar.gz" -C "$WORK" "llama_cpp_python-$VERSION/vendor/llama.cpp/ggml"
  LLAMA_CPP=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp
fi
G=$LLAMA_CPP/ggml
FLAGS=(-O2 -ffp-contract=off -I"$G/include" -I"$G/src")
cc "${FLAGS[@]}" -c "$G/src/ggml-quants.c" -o "$WORK/quants.o"
cc "${FLAGS[@]}" "$ROOT/scripts/gguf/kquant_golden.c" "$WORK/quants.o" -lm -o "$WORK/golden"
OUT=$ROOT/tests/fixtures/gguf/kquant_golden.bin
"$WORK/golden" > "$WORK/out.bin"
mv "$WORK/out.bin" "$OUT"
echo "wrote $OUT ($(stat -c %s "$OUT") bytes)" >&2
