# Sourced by kquant_golden.sh and check_q4_k_m.sh: `ggml_src WORK` prints the path of llama.cpp
# sources to build ggml's reference quantizers from: $LLAMA_CPP when set, else the llama.cpp
# vendored in the llama-cpp-python sdist (pinned, sha256-checked, from PyPI), unpacked in WORK.
GGML_SDIST_VERSION=0.3.36
GGML_SDIST_URL=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$GGML_SDIST_VERSION.tar.gz
GGML_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

ggml_src() {
  local work=$1
  if [ -n "${LLAMA_CPP:-}" ]; then
    echo "$LLAMA_CPP"
    return
  fi
  local dir=$work/llama_cpp_python-$GGML_SDIST_VERSION/vendor/llama.cpp
  if [ ! -f "$dir/ggml/src/ggml-quants.c" ]; then
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
      "$GGML_SDIST_URL" "$work/sdist.tar.gz"
    echo "$GGML_SDIST_SHA256  $work/sdist.tar.gz" | sha256sum -c - >&2
    tar xzf "$work/sdist.tar.gz" -C "$work" "llama_cpp_python-$GGML_SDIST_VERSION/vendor/llama.cpp/ggml"
    rm -f "$work/sdist.tar.gz"
  fi
  echo "$dir"
}

# Compiler flags for ggml's reference code: IEEE arithmetic without contraction (no fused
# multiply-adds, no -march), so its results do not depend on the compiler's choices.
ggml_flags() {
  echo "-O2 -ffp-contract=off -I$1/ggml/include -I$1/ggml/src"
}
