# Sourced by the other scripts: points the tch build at the libtorch that
# scripts/setup.sh chose and keeps one shared target folder.
#
# LIBTORCH (tch's own variable), from the environment or remembered by
# setup.sh in .locvtp-setup, names a libtorch to build against; tch reads it
# only while LIBTORCH_USE_PYTORCH is unset. Without it, the build takes the
# torch that the virtualenv's Python imports (LIBTORCH_USE_PYTORCH).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$HOME/.cargo/bin:$PATH"
if [ -z "${LIBTORCH+x}" ] && [ -f "$ROOT/.locvtp-setup" ]; then
  LIBTORCH="$(sed -n 's/^LIBTORCH=//p' "$ROOT/.locvtp-setup" | head -n 1)"
fi
if [ -n "${LIBTORCH:-}" ]; then
  export LIBTORCH
  unset LIBTORCH_USE_PYTORCH
else
  unset LIBTORCH
  export LIBTORCH_USE_PYTORCH=1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
