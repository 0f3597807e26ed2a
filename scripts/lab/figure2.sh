#!/usr/bin/env bash
# The paper's Figure 2 on the lab's models: DeRa against models retrained at beta / lambda and
# against the weight-merged model, for the length reward.
#
#   1. DPO from the committed reference at beta 0.2 and 0.05 (= beta 0.1 / lambda for lambda
#      0.5 and 2) on the same preference pairs as assets/models/aligned-length.
#   2. `dera merge` of reference and aligned-length at lambda 0.5 and 2 (f32).
#   3. A DeRa sweep of the committed pair over lambda 0..2, and a sweep of every retrained and
#      merged model at lambda 1 (the model itself; KL to the same reference), same prompts,
#      same seeds.
#   4. `dera-lab-train compare`: table + docs/figures/figure2.svg.
#
# About 25 minutes on 2 cores. Usage: bash scripts/lab/figure2.sh
# PROMPTS (default 100) x SAMPLES (default 4) responses per lambda.
set -euo pipefail
cd "$(dirname "$0")/../.."

PROMPTS="${PROMPTS:-100}"
SAMPLES="${SAMPLES:-4}"
W=target/dera-lab/figure2
REF=assets/models/reference
ALIGNED=assets/models/aligned-length
REWARD=length:25-50
# The pairs of aligned-length (written by make_assets.sh); sampled again, with the same seed and
# settings, when absent.
PAIRS="${PAIRS:-target/dera-lab/pairs-length.jsonl}"

cargo build -p dera-lab --bin dera-lab-train -p dera-cli --bin dera
LAB=target/debug/dera-lab-train
DERA=target/debug/dera
mkdir -p "$W" docs/figures

for beta in 0.2 0.05; do
  if [ ! -f "$W/retrained-beta$beta/model.safetensors" ]; then
    "$LAB" dpo --ref "$REF" --out "$W/retrained-beta$beta" --reward "$REWARD" --beta "$beta" \
      --pairs "$PAIRS" --num-prompts 4000 --samples-per-prompt 8
  fi
done
for l in 0.5 2; do
  "$DERA" merge --ref "$REF" --aligned "$ALIGNED" --lambda "$l" --dtype f32 \
    --out "$W/merged-$l" --force
done

sweep() { # OUT ALIGNED LAMBDAS
  "$LAB" sweep --ref "$REF" --aligned "$2" --lambdas "$3" --prompts assets/prompts.jsonl \
    --max-prompts "$PROMPTS" --samples "$SAMPLES" --reward "$REWARD" --out "$1"
}
sweep "$W/dera.jsonl" "$ALIGNED" 0:2:0.25
sweep "$W/retrained-0.5.jsonl" "$W/retrained-beta0.2" 1
sweep "$W/retrained-2.jsonl" "$W/retrained-beta0.05" 1
sweep "$W/merged-0.5.jsonl" "$W/merged-0.5" 1
sweep "$W/merged-2.jsonl" "$W/merged-2" 1

"$LAB" compare --dera "$W/dera.jsonl" --reward "$REWARD" \
  --point "retrained@0.5=$W/retrained-0.5.jsonl" --point "retrained@2=$W/retrained-2.jsonl" \
  --point "merged@0.5=$W/merged-0.5.jsonl" --point "merged@2=$W/merged-2.jsonl" \
  --plot docs/figures/figure2.svg --table "$W/figure2.md"
