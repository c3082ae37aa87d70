#!/usr/bin/env bash
# The demo: installs what is missing, builds in release mode, generates the
# demo videos with their narration, and runs the demo graphs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
source scripts/env.sh
cargo build --locked --release -p locvtp-flow
BIN="$CARGO_TARGET_DIR/release/locvtp-flow"
"$BIN" demo-data --out data/demo
# Clip features of the held-out demo videos with the full C3D on CPU or GPU.
"$BIN" run graphs/extract.toml "$@"
