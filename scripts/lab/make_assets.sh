#!/usr/bin/env bash
# Regenerates the lab's committed tiny models:
#   assets/models/reference         SFT on Debian's fortunes (tokenizer trained here too)
#   assets/models/aligned-length    DPO at beta 0.1, reward length:25-50 (words), pairs
#                                   balanced between too-short and too-long rejections
#   assets/models/aligned-question  DPO at beta 0.1, reward question (contains '?')
#   assets/prompts.jsonl            held-out prompts (first 3 words of 500 fortunes)
# and the preference pairs under target/dera-lab/. About 30-40 minutes on 2 CPU cores.
#
# Usage: bash scripts/lab/make_assets.sh   (from anywhere; needs root or sudo for apt-get)
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -f /usr/share/games/fortunes/fortunes ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update
  $SUDO apt-get install -y fortunes fortunes-min
fi

# The dev profile builds burn at opt-level 2 (see [profile.dev.package."*"]), which trains
# about as fast as --release here and builds much faster. PROFILE=release to change.
PROFILE="${PROFILE:-dev}"
cargo build --profile "$PROFILE" -p dera-lab --bin dera-lab-train
DIR=debug; [ "$PROFILE" = "release" ] && DIR=release
BIN="${CARGO_TARGET_DIR:-target}/$DIR/dera-lab-train"

mkdir -p target/dera-lab
rm -f target/dera-lab/pairs-length.jsonl target/dera-lab/pairs-question.jsonl
time "$BIN" all --out assets/models/reference --prompts-out assets/prompts.jsonl \
  --epochs 8 --beta 0.1 --work target/dera-lab
du -sh assets/models/*
