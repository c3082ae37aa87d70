#!/usr/bin/env bash
# Runs every test of the workspace. Installs what is missing first
# (scripts/setup.sh is idempotent: a second run only checks).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
source scripts/env.sh
# One build per run: incremental state would only double the target folder.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# cargo fmt does not see the stage-type modules (they are declared by the
# registry macro), so they are checked here.
if command -v rustfmt >/dev/null; then
  rustfmt --edition 2021 --check pipeline/src/stage_types/*.rs
fi
# The integration tests drive the locvtp-flow binary of the same build.
cargo build --locked -p locvtp-flow
cargo test --locked --workspace
