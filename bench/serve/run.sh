#!/usr/bin/env bash
# Throughput and latency of `dera serve` under N concurrent OpenAI clients (the official `openai`
# Python client), against the same requests sent one at a time, on the embedded tiny models and
# on the SmolLM2-135M shape (random weights from bench/decode/make_models.py, with the real
# SmolLM2 tokenizer from bench/decode/smollm2.py):
#
#   bench/serve/run.sh          # SETS="embedded 135m" CLIENTS=1,8,32 REQUESTS=32 NEW=64 MAX_BATCH=32
#
# MODES="stream plain" (default both): streamed requests, then plain ones (one response per
# request). RAW=1 adds bench/serve/raw_client.py (asyncio, no client library), which also
# reports the server's and the client's core time per token. SERVER_THREADS=N
# caps the server's compute threads (RAYON_NUM_THREADS), so that on a machine with more cores
# the clients run beside the server instead of on its cores. SERVE_ARGS adds `dera serve`
# options (e.g. "--shards 1").
#
# Python: $PY, else a .venv-serve at the repository root made from requirements.txt (pinned);
# the 135m models need $BENCH_PY (torch + transformers; default .venv-bench, see bench/decode).
# The server is the release binary, on an ephemeral 127.0.0.1 port; results go to
# target/bench-serve/*.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SETS=${SETS:-"embedded 135m"}
CLIENTS=${CLIENTS:-1,8,32}
REQUESTS=${REQUESTS:-32}
NEW=${NEW:-64}
MAX_BATCH=${MAX_BATCH:-32}
MODES=${MODES:-"stream plain"}
RAW=${RAW:-0}
MODELS=${MODELS:-$ROOT/target/bench-models}
BENCH_PY=${BENCH_PY:-$ROOT/.venv-bench/bin/python}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

if [ -z "${PY:-}" ]; then
  if [ ! -x "$ROOT/.venv-serve/bin/python" ]; then
    python3 -m venv "$ROOT/.venv-serve"
    "$ROOT/.venv-serve/bin/pip" install -q -r "$HERE/requirements.txt"
  fi
  PY=$ROOT/.venv-serve/bin/python
fi
[ -n "${DERA:-}" ] || (cd "$ROOT" && cargo build --release -q -p dera-cli)
DERA=${DERA:-$TARGET/release/dera}
OUT=$ROOT/target/bench-serve
mkdir -p "$OUT"

serve_and_bench() { # label, aligned count, lambdas, dera model args...
  local label=$1 aligned=$2 lambdas=$3
  shift 3
  local log=$OUT/$label.server.log
  ( [ -n "${SERVER_THREADS:-}" ] && export RAYON_NUM_THREADS=$SERVER_THREADS
    exec "$DERA" serve "$@" ${SERVE_ARGS:-} --port 0 --max-batch "$MAX_BATCH" --max-queue 1024 ) > "$OUT/$label.addr" 2> "$log" &
  local pid=$!
  local addr=""
  for _ in $(seq 600); do
    addr=$(grep -o 'http://[0-9.:]*' "$OUT/$label.addr" || true)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2> /dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  local status=0
  "$PY" "$HERE/check.py" --base-url "$addr/v1" --aligned "$aligned" || status=$?
  for mode in $MODES; do
    local flag=""
    [ "$mode" = plain ] && flag=--no-stream
    "$PY" "$HERE/bench.py" --base-url "$addr/v1" --clients "$CLIENTS" --requests "$REQUESTS" \
      --max-tokens "$NEW" --lambdas "$lambdas" --aligned "$aligned" --label "$label-$mode" \
      --json "$OUT/$label-$mode.json" $flag | tee "$OUT/$label-$mode.md" || status=$?
  done
  if [ "$RAW" = 1 ]; then
    echo "raw HTTP client (streamed, $REQUESTS requests x $NEW tokens):"
    SERVER_PID=$pid "$PY" "$HERE/raw_client.py" "${addr##*:}" "$CLIENTS" "$REQUESTS" "$NEW" | tee "$OUT/$label-raw.md" || status=$?
  fi
  kill -TERM "$pid"
  wait "$pid"
  return $status
}

for set in $SETS; do
  case $set in
    embedded)
      M=$ROOT/assets/models
      serve_and_bench embedded 2 "0,0.5,1,1.5,2" --ref "$M/reference" \
        --aligned "$M/aligned-length" --aligned "$M/aligned-question"
      ;;
    135m)
      "$BENCH_PY" "$ROOT/bench/decode/make_models.py" --shape 135m --out "$MODELS/135m"
      "$BENCH_PY" "$ROOT/bench/decode/smollm2.py" --out "$MODELS/smollm2-135m-instruct"
      for name in ref aligned; do
        cp "$MODELS/smollm2-135m-instruct"/tokenizer*.json "$MODELS/smollm2-135m-instruct"/*.jinja \
          "$MODELS/135m/f32/$name/"
      done
      serve_and_bench 135m 1 "0,0.5,1,1.5" --ref "$MODELS/135m/f32/ref" \
        --aligned "$MODELS/135m/f32/aligned"
      ;;
    *) echo "unknown set $set (embedded, 135m)" >&2; exit 2 ;;
  esac
done
