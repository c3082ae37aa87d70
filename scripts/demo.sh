#!/usr/bin/env bash
# The demo: installs what is missing, builds in release mode, generates the
# demo videos with their narration, pre-trains LocVTP on them, evaluates the
# checkpoint against random weights, and extracts clip features of the
# held-out videos with it. Extra arguments go to every `run` (e.g. -w 2).
# (`locvtp-flow bench` compares with Python decoders the demo does not need:
# scripts/setup.sh --bench installs them.)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
source scripts/env.sh
cargo build --locked --release -p locvtp-flow
BIN="$CARGO_TARGET_DIR/release/locvtp-flow"
"$BIN" demo-data --out data/demo
"$BIN" run graphs/pretrain.toml "$@"
"$BIN" run graphs/evaluate.toml "$@"
"$BIN" run graphs/evaluate-random.toml "$@"
"$BIN" run graphs/extract.toml \
  --set stages.encode.model=configs/c3d-small.toml \
  --set stages.encode.checkpoint=runs/pretrain/checkpoints/last.safetensors \
  --set run.output_dir=runs/extract-demo "$@"
