#!/usr/bin/env bash
# The downstream grounding report: for each seed (default 0 1 2),
# pre-training on the demo videos -> clip features of the demo's grounding
# videos with that checkpoint, and with the same C3D at random weights ->
# 2D-TAN grounding on each (graphs/ground-demo.toml: trained on the train
# split, epoch chosen on validation, scored once on the 120 test queries).
# Then scripts/demo_report.py prints mean ± sd over the seeds for both
# feature sets and the three baselines. Extra arguments go to every `run`.
#
#   scripts/demo_report.sh            # seeds 0 1 2, in runs/report
#   SEEDS="0 1" scripts/demo_report.sh -w 2
#   LOCVTP_FLOW_BIN=dist/locvtp-flow scripts/demo_report.sh
#   LAYER=fc6 scripts/demo_report.sh  # features from C3D's fc6 instead of the
#                                     # projection (same pre-training runs;
#                                     # results in extract-*-fc6, ground-*-fc6)
#
# Every step resumes: a run stopped half-way is started again by the same
# command and redoes only what is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
source scripts/env.sh
# LOCVTP_FLOW_BIN runs a binary built elsewhere (e.g. the portable one,
# scripts/portable.sh) instead of building the release binary here.
if [ -n "${LOCVTP_FLOW_BIN:-}" ]; then
  BIN="$LOCVTP_FLOW_BIN"
else
  cargo build --locked --release -p locvtp-flow
  BIN="$CARGO_TARGET_DIR/release/locvtp-flow"
fi
SEEDS="${SEEDS:-0 1 2}"
OUT="${OUT:-runs/report}"
LAYER="${LAYER:-projection}"
SUFFIX=""
if [ "$LAYER" != projection ]; then SUFFIX="-$LAYER"; fi
"$BIN" demo-data --out data/demo
for seed in $SEEDS; do
  dir="$OUT/seed$seed"
  "$BIN" run graphs/pretrain.toml --set run.seed="$seed" --set run.output_dir="$dir/pretrain" "$@"
  for features in locvtp random; do
    weights=()
    if [ "$features" = locvtp ]; then
      weights=(--set stages.encode.checkpoint="$dir/pretrain/checkpoints/last.safetensors")
    fi
    "$BIN" run graphs/extract.toml \
      --set stages.videos.dir=data/demo/grounding/videos \
      --set stages.encode.model=configs/c3d-small.toml "${weights[@]}" \
      --set stages.encode.layer="$LAYER" \
      --set stages.clips.stride=8 \
      --set run.seed="$seed" --set run.output_dir="$dir/extract-$features$SUFFIX" "$@"
    "$BIN" run graphs/ground-demo.toml \
      --set stages.data.features="$dir/extract-$features$SUFFIX/features.h5" \
      --set run.seed="$seed" --set run.output_dir="$dir/ground-$features$SUFFIX" "$@"
  done
done
# shellcheck disable=SC2086
.venv/bin/python scripts/demo_report.py --layer "$LAYER" "$OUT" $SEEDS
