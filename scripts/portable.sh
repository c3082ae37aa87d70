#!/usr/bin/env bash
# Builds a portable locvtp-flow: FFmpeg and HDF5 linked in statically, so that
# the binary's only dynamic dependencies are libtorch (with the C++ runtime it
# brings) and the C library. Copy it to any x86-64 Linux machine with
# glibc >= this machine's and a torch 2.11 (or a libtorch 2.11); nothing else
# needs installing there. README.md, "A portable binary", shows how to deploy.
#
#   scripts/portable.sh            builds dist/locvtp-flow (release), and
#                                  dist/gpu-bench for benches/gpu
#   scripts/portable.sh --check    also runs the portable-build checks: `ldd`
#                                  lists nothing but libtorch and the C/C++
#                                  runtime, the binary runs, its features on
#                                  the demo set equal the default build's bit
#                                  for bit, and the integration tests pass
#                                  driving it
#
# What it does, each step skipped when already done:
#
#   1. Debian packages: nasm (FFmpeg's x86 assembly), dpkg-dev, and a
#      deb-src entry mirroring the machine's own apt sources, so that the
#      FFmpeg source is the one Debian ships; CMake 3.31 from PyPI (HDF5's
#      build needs 3.26, Debian 12 has 3.25).
#   2. FFmpeg: `apt-get source ffmpeg` at the version of the installed
#      libavcodec-dev (Debian's patches applied), configured with only what
#      locvtp-flow uses (the component lists below), built as static,
#      position-independent libraries into $LOCVTP_CACHE/portable.
#   3. locvtp-flow with the `portable` cargo feature: ffmpeg-sys-next links
#      those libraries statically (FFMPEG_DIR), hdf5-metno builds its bundled
#      HDF5 source statically. The result is copied to dist/locvtp-flow.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LOCVTP_CACHE:-$HOME/.cache/locvtp-flow}"
WORK="$CACHE/portable"
LOG="$WORK/build.log"
DIST="$ROOT/dist"

CHECK=0
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "portable.sh: unknown option $arg (see --help)" >&2
      exit 2
      ;;
  esac
done

mkdir -p "$WORK"
log() { printf 'portable: %s\n' "$*"; }
die() {
  printf 'portable: %s\n' "$*" >&2
  exit 1
}
# Runs a long step with its output in the build log; on failure, shows the end
# of the log.
quietly() {
  local what="$1"
  shift
  log "$what (output in $LOG)"
  if ! "$@" >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    die "$what failed; the full output is in $LOG"
  fi
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- 1. Debian packages and the deb-src entry -------------------------------
bash "$ROOT/scripts/setup.sh"
missing=()
for pkg in nasm dpkg-dev libffmpeg-nvenc-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  quietly "installing ${missing[*]}" $SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# hdf5-metno's bundled HDF5 needs CMake 3.26 or newer, Debian 12 has 3.25:
# a pinned CMake from PyPI in a tools virtualenv of the cache.
CMAKE_VERSION="3.31.6"
TOOLS="$WORK/tools-cmake-$CMAKE_VERSION"
if [ ! -x "$TOOLS/bin/cmake" ]; then
  rm -rf "$TOOLS"
  quietly "creating $TOOLS" python3 -m venv "$TOOLS"
  quietly "installing cmake==$CMAKE_VERSION from PyPI" "$TOOLS/bin/pip" install -q "cmake==$CMAKE_VERSION"
fi

FFMPEG_VERSION="$(dpkg-query -W -f='${Version}' libavcodec-dev)"
UPSTREAM="${FFMPEG_VERSION#*:}"
UPSTREAM="${UPSTREAM%%-*}"
SRC="$WORK/ffmpeg-$UPSTREAM-source"
if [ ! -d "$SRC" ]; then
  # The source entries are the machine's own binary entries with
  # Types: deb-src (deb822 files) or `deb-src` lines (sources.list), so the
  # source comes from the mirror (and snapshot) the libraries came from.
  SOURCES=/etc/apt/sources.list.d/locvtp-flow-src.sources
  LIST=/etc/apt/sources.list.d/locvtp-flow-src.list
  if ! apt-get source --print-uris -q "ffmpeg=$FFMPEG_VERSION" >/dev/null 2>&1; then
    tmp="$(mktemp)"
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -e "$f" ] && [ "$f" != "$SOURCES" ] && sed 's/^Types: deb$/Types: deb-src/' "$f" >>"$tmp" && echo >>"$tmp"
    done
    if [ -s "$tmp" ]; then $SUDO cp "$tmp" "$SOURCES"; fi
    : >"$tmp"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -e "$f" ] && [ "$f" != "$LIST" ] && { grep -E '^deb ' "$f" | sed 's/^deb /deb-src /' >>"$tmp" || true; }
    done
    if [ -s "$tmp" ]; then $SUDO cp "$tmp" "$LIST"; fi
    rm -f "$tmp"
    quietly "apt-get update (deb-src entries added)" $SUDO apt-get update -q
  fi
  rm -rf "$WORK/download"
  mkdir -p "$WORK/download"
  (cd "$WORK/download" && quietly "downloading Debian's ffmpeg $FFMPEG_VERSION source" \
    apt-get source -q --download-only "ffmpeg=$FFMPEG_VERSION")
  dsc="$(ls "$WORK"/download/ffmpeg_*.dsc)"
  quietly "unpacking $(basename "$dsc") with Debian's patches" dpkg-source -x "$dsc" "$SRC.partial"
  mv "$SRC.partial" "$SRC"
fi

# --- 2. FFmpeg, static, only what locvtp-flow uses --------------------------
# Containers users bring (MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, Ogg,
# GIF, raw H.264/HEVC streams) and the video codecs found in them. FFV1 and
# the MPEG-4 encoder with the MP4 muxer are for generated test and demo
# videos (libx264 is not linked: generated demo videos are then MPEG-4 part
# 2). The filters are the decode stage's crop/rotate/scale chain. The cuvid
# decoders are the GPU's video decoder (`decoder = "nvdec"`): Debian's
# nv-codec-headers (libffmpeg-nvenc-dev) are headers only, and FFmpeg loads
# the NVIDIA driver's libcuda and libnvcuvid at run time, where they exist.
# No network, no devices, no external libraries: nothing else to link.
DEMUXERS="mov,matroska,avi,mpegts,mpegps,mpegvideo,m4v,flv,ogg,gif,h264,hevc,ivf,yuv4mpegpipe"
DECODERS="h264,hevc,vp8,vp9,mpeg4,mpeg1video,mpeg2video,mjpeg,gif,ffv1,theora,h263,rawvideo"
CUVID="h264_cuvid,hevc_cuvid,vp8_cuvid,vp9_cuvid,mpeg4_cuvid,mpeg1_cuvid,mpeg2_cuvid,mjpeg_cuvid"
PARSERS="h264,hevc,vp8,vp9,mpeg4video,mpegvideo,mjpeg,gif,h263"
FILTERS="buffer,buffersink,crop,transpose,hflip,vflip,scale,format,null"
FFMPEG_FLAGS=(
  --disable-shared --enable-static --enable-pic
  --disable-programs --disable-doc --disable-debug --disable-autodetect
  --disable-everything --disable-network --disable-avdevice --disable-swresample
  --disable-postproc --disable-iconv --disable-zlib --disable-bzlib --disable-lzma
  --enable-protocol=file,pipe
  --enable-demuxer="$DEMUXERS"
  --enable-decoder="$DECODERS"
  --enable-ffnvcodec --enable-cuvid --enable-decoder="$CUVID"
  --enable-parser="$PARSERS"
  --enable-filter="$FILTERS"
  --enable-encoder=mpeg4 --enable-muxer=mp4,mov
)
FLAGS_HASH="$(printf '%s\n' "$FFMPEG_VERSION" "${FFMPEG_FLAGS[@]}" | sha256sum | cut -c1-12)"
PREFIX="$WORK/ffmpeg-$UPSTREAM-static-$FLAGS_HASH"
if [ ! -f "$PREFIX/lib/libavutil.a" ]; then
  rm -rf "$PREFIX" "$WORK/ffmpeg-build"
  mkdir -p "$WORK/ffmpeg-build"
  (cd "$WORK/ffmpeg-build" && quietly "configuring FFmpeg $UPSTREAM" \
    "$SRC/configure" --prefix="$PREFIX" "${FFMPEG_FLAGS[@]}")
  quietly "building FFmpeg $UPSTREAM (a few minutes)" make -C "$WORK/ffmpeg-build" -j"$(nproc)"
  quietly "installing FFmpeg into $PREFIX" make -C "$WORK/ffmpeg-build" install
  rm -rf "$WORK/ffmpeg-build"
fi
log "FFmpeg $UPSTREAM static libraries: $PREFIX/lib"

# --- 3. locvtp-flow with the portable feature -------------------------------
source "$ROOT/scripts/env.sh"
# The shared target folder: the dependencies that do not touch FFmpeg or HDF5
# are built once for both builds. The feature changes the hash of every crate
# above them, so the two builds' artifacts sit side by side and switching
# costs a link; target/release/locvtp-flow is whichever was built last, hence
# the copy in dist/.
export FFMPEG_DIR="$PREFIX"
export CMAKE="$TOOLS/bin/cmake"
export CARGO_INCREMENTAL=0
# ffmpeg-sys-next does not notice FFMPEG_DIR pointing at another build (one
# with other components): when the prefix changes, its build is redone, and
# FFmpeg builds of other flags are removed so that nothing links them.
STAMP="$CARGO_TARGET_DIR/release/.portable-ffmpeg-prefix"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$PREFIX" ]; then
  quietly "cleaning ffmpeg-sys-next (FFmpeg prefix changed)" cargo clean --release -p ffmpeg-sys-next
  find "$WORK" -maxdepth 1 -name "ffmpeg-*-static-*" ! -path "$PREFIX" -exec rm -rf {} +
fi
quietly "building locvtp-flow --release --features portable" \
  cargo build --locked --release -p locvtp-flow --features portable
echo "$PREFIX" >"$STAMP"
mkdir -p "$DIST"
cp "$CARGO_TARGET_DIR/release/locvtp-flow" "$DIST/locvtp-flow"
strip "$DIST/locvtp-flow"
log "built $DIST/locvtp-flow ($(du -h "$DIST/locvtp-flow" | cut -f1))"
# The GPU benchmark's model half links only libtorch already: it travels
# beside the portable binary (benches/gpu/run_on_device.sh finds both).
quietly "building gpu-bench --release" cargo build --locked --release -p locvtp-gpu-bench
strip -o "$DIST/gpu-bench" "$CARGO_TARGET_DIR/release/gpu-bench"
log "built $DIST/gpu-bench ($(du -h "$DIST/gpu-bench" | cut -f1))"

if [ "$CHECK" -eq 1 ]; then
  bash "$ROOT/scripts/portable_check.sh" "$DIST/locvtp-flow"
fi
