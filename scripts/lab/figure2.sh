#!/usr/bin/env bash
# The paper's Figure 2 on the lab's models: DeRa against models retrained at beta / lambda and
# against the weight-merged model, for the length reward.
#
#   1. DPO from the committed reference at beta 0.2 and 0.05 (= beta 0.1 / lambda for lambda
#      0.5 and 2) on the same preference pairs as assets/models/aligned-length.
#   2. `dera merge` of reference and the beta-0.1 model at lambda 0.5 and 2 (f32).
#   3. A DeRa sweep of reference + beta-0.1 model over lambda 0..2, and a sweep of every
#      retrained and merged model at lambda 1 (the model itself; KL to the same reference),
#      same prompts, same seeds.
#   4. `dera-lab-train compare`: table + docs/figures/figure2-$LABELS.svg.
#
# LABELS=hard (default): the committed assets/models/aligned-length (DPO, 2 epochs) is the
#   beta-0.1 model and the retrained models use the same recipe.
# LABELS=soft: every model, the beta-0.1 one included, trains on Bradley-Terry soft labels
#   (`--soft-labels`, 8 epochs), whose optimum margin is set by beta.
# PROMPTS (default 100) x SAMPLES (default 4) responses per lambda. About 15 (hard) or 30
# (soft) minutes on 2 cores. Usage: [LABELS=soft] bash scripts/lab/figure2.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

LABELS="${LABELS:-hard}"
PROMPTS="${PROMPTS:-100}"
SAMPLES="${SAMPLES:-4}"
W="target/dera-lab/figure2-$LABELS"
REF=assets/models/reference
REWARD=length:25-50
# The pairs of aligned-length (written by make_assets.sh); sampled again, with the same seed and
# settings, when absent.
PAIRS="${PAIRS:-target/dera-lab/pairs-length.jsonl}"
case "$LABELS" in
  hard) TRAIN=(--epochs 2); ALIGNED=assets/models/aligned-length ;;
  soft) TRAIN=(--soft-labels --epochs 8); ALIGNED="$W/retrained-beta0.1" ;;
  *) echo "LABELS must be hard or soft" >&2; exit 2 ;;
esac

cargo build -p dera-lab --bin dera-lab-train -p dera-cli --bin dera
LAB=target/debug/dera-lab-train
DERA=target/debug/dera
mkdir -p "$W" docs/figures

betas="0.2 0.05"; [ "$LABELS" = soft ] && betas="0.1 0.2 0.05"
for beta in $betas; do
  if [ ! -f "$W/retrained-beta$beta/model.safetensors" ]; then
    "$LAB" dpo --ref "$REF" --out "$W/retrained-beta$beta" --reward "$REWARD" --beta "$beta" \
      --pairs "$PAIRS" --num-prompts 4000 --samples-per-prompt 8 "${TRAIN[@]}"
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
  --plot "docs/figures/figure2-$LABELS.svg" --table "$W/figure2.md"
