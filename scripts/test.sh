#!/usr/bin/env bash
# Runs every test of the workspace. Installs what is missing first
# (scripts/setup.sh is idempotent: a second run only checks).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
source scripts/env.sh
# cargo fmt does not see the stage-type modules (they are declared by the
# registry macro), so they are checked here.
rustfmt --edition 2021 --check pipeline/src/stage_types/*.rs
# The integration tests drive the locvtp-flow binary of the same build.
cargo build --locked -p locvtp-flow
cargo test --locked --workspace
