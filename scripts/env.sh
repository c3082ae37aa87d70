# Sourced by the other scripts: points the tch build at the virtualenv's
# torch (LIBTORCH_USE_PYTORCH) and keeps one shared target folder.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$HOME/.cargo/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
