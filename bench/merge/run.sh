#!/usr/bin/env bash
# Streams a SmolLM2-360M-shaped bf16 merge through dera-merge and through the usual
# torch recipe, under /usr/bin/time -v; prints wall time, throughput, peak RSS and the ratio.
#
#   bench/merge/run.sh            # DATA=/tmp/dera-merge-bench REPS=3 LAMBDA=0.3 PY=...
#
# When $MERGEKIT (default /tmp/mk-venv/bin/mergekit-yaml) exists, mergekit's linear merge
# (mergekit_linear.yml, lambda fixed at 0.3) runs too. Outputs are compared element by element.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DATA=${DATA:-/tmp/dera-merge-bench}
PY=${PY:-/work/.venv-golden/bin/python}
LAMBDA=${LAMBDA:-0.3}
REPS=${REPS:-3}
MERGEKIT=${MERGEKIT:-/tmp/mk-venv/bin/mergekit-yaml}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/light}

if [ ! -x /usr/bin/time ]; then apt-get install -y time >/dev/null; fi
(cd "$ROOT" && cargo build --release -p dera-merge --example merge)
BIN=$CARGO_TARGET_DIR/release/examples/merge
[ -f "$DATA/b/model.safetensors" ] || "$PY" "$HERE/make_pair.py" "$DATA"

secs() { # "Elapsed (wall clock) time (h:mm:ss or m:ss): 1:02.34" -> seconds
  grep "Elapsed (wall clock)" "$1" | awk -F': ' '{n=split($2,p,":"); s=0; for(i=1;i<=n;i++) s=s*60+p[i]; print s}'
}
rss_mb() { grep "Maximum resident set size" "$1" | awk -F': ' '{printf "%.1f", $2/1024}'; }

# run NAME OUT CMD...: REPS runs from a warm page cache; keeps the best wall time and max RSS.
run() {
  local name=$1 out=$2; shift 2
  local best="" rss=0
  for _ in $(seq "$REPS"); do
    rm -rf "$out"
    cat "$DATA/a/model.safetensors" "$DATA/b/model.safetensors" >/dev/null
    /usr/bin/time -v -o "$DATA/$name.time" "$@" >"$DATA/$name.log" 2>&1
    local s r; s=$(secs "$DATA/$name.time"); r=$(rss_mb "$DATA/$name.time")
    best=$(awk -v a="$best" -v b="$s" 'BEGIN{print (a=="" || b<a) ? b : a}')
    rss=$(awk -v a="$rss" -v b="$r" 'BEGIN{print (b>a) ? b : a}')
  done
  echo "$best $rss"
}

read -r DW DR < <(run dera "$DATA/out-dera" "$BIN" --ref "$DATA/a" --aligned "$DATA/b" \
  --lambda "$LAMBDA" --out "$DATA/out-dera" --quiet)
read -r TW TR < <(run torch "$DATA/out-torch" "$PY" "$HERE/torch_merge.py" "$DATA/a" "$DATA/b" \
  "$LAMBDA" "$DATA/out-torch")
MW="" MR=""
if [ -x "$MERGEKIT" ]; then
  read -r MW MR < <(run mergekit "$DATA/out-mergekit" "$MERGEKIT" "$HERE/mergekit_linear.yml" \
    "$DATA/out-mergekit" --no-copy-tokenizer)
fi

IN=$(( $(stat -c %s "$DATA/a/model.safetensors") + $(stat -c %s "$DATA/b/model.safetensors") ))
OUT=$(stat -c %s "$DATA/out-dera/model.safetensors")
LARGEST=$((49152 * 960 * 2))
awk -v dw="$DW" -v dr="$DR" -v tw="$TW" -v tr="$TR" -v io=$((IN + OUT)) -v big=$LARGEST \
    -v mw="$MW" -v mr="$MR" -v reps="$REPS" -v cpus="$(nproc)" 'BEGIN {
  printf "inputs 2 x %.0f MB bf16, output %.0f MB; best of %d runs, %d CPUs, warm page cache\n", io/3e6, io/3e6, reps, cpus
  printf "%-10s %8s %10s %12s\n", "", "wall s", "GB/s", "peak RSS MB"
  printf "%-10s %8.2f %10.2f %12.1f\n", "dera", dw, io/dw/1e9, dr
  printf "%-10s %8.2f %10.2f %12.1f\n", "torch", tw, io/tw/1e9, tr
  if (mw != "") printf "%-10s %8.2f %10.2f %12.1f\n", "mergekit", mw, io/mw/1e9, mr
  printf "speed-up vs torch %.2fx; RSS target (2 x largest tensor + 100 MB) = %.1f MB\n", tw/dw, (2*big + 100e6)/1048576
}'
printf "dera vs torch: "; "$PY" "$HERE/compare.py" "$DATA/out-dera" "$DATA/out-torch"
if [ -n "$MW" ]; then
  printf "dera vs mergekit: "; "$PY" "$HERE/compare.py" "$DATA/out-dera" "$DATA/out-mergekit"
fi
