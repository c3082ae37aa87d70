#!/usr/bin/env bash
# Checks a portable locvtp-flow (scripts/portable.sh) against the default
# build, and fails on the first difference:
#
#   1. its direct dynamic dependencies (ELF NEEDED entries) are only libtorch's
#      libraries and the C/C++ runtime: no FFmpeg, HDF5 or other Debian library;
#   2. it runs: `--version`, and `check` of the shipped extraction graph;
#   3. its GPU video decoders (cuvid) are built in: asked for NVDEC on this
#      machine without an NVIDIA driver, it says the decoder did not start
#      and decodes on the CPU; and its features equal the default release
#      build's, bit for bit, on every video of the demo set (train, heldout,
#      grounding), extracted with the same seeded c3d-tiny weights;
#   4. the integration tests pass driving it (LOCVTP_FLOW_BIN).
#
#   scripts/portable_check.sh [PORTABLE_BINARY]     (default dist/locvtp-flow)
#
# The demo set is data/demo (generated with the default build when missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PORTABLE="$(realpath "${1:-dist/locvtp-flow}")"
[ -x "$PORTABLE" ] || {
  echo "portable_check: $PORTABLE is missing: run scripts/portable.sh first" >&2
  exit 1
}
source scripts/env.sh
log() { printf 'portable_check: %s\n' "$*"; }
fail() {
  printf 'portable_check: FAILED: %s\n' "$*" >&2
  exit 1
}

# --- 1. dynamic dependencies ------------------------------------------------
needed="$(readelf -d "$PORTABLE" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
log "NEEDED: $(echo $needed)"
allowed='^(libtorch(_cpu|_cuda)?\.so|libc10(_cuda)?\.so|libstdc\+\+\.so\.6|libgcc_s\.so\.1|libm\.so\.6|libc\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux-x86-64\.so\.2)$'
for lib in $needed; do
  [[ "$lib" =~ $allowed ]] || fail "$PORTABLE needs $lib, which is neither libtorch nor the C/C++ runtime"
done
log "ldd:"
ldd "$PORTABLE" | sed 's/^/    /'

# --- 2. it runs -------------------------------------------------------------
"$PORTABLE" --version
"$PORTABLE" check graphs/extract.toml >/dev/null || fail "$PORTABLE check graphs/extract.toml"

# --- 3. features on the demo set equal the default build's -----------------
cargo build --locked --release -p locvtp-flow
DEFAULT="$CARGO_TARGET_DIR/release/locvtp-flow"
DEMO="$ROOT/data/demo"
if [ ! -f "$DEMO/manifest.json" ]; then
  "$DEFAULT" demo-data --out "$DEMO"
fi

# The GPU's decoders are built in.
# No NVIDIA driver here: asking for NVDEC must fall back to the CPU because
# the driver did not start the decoder, not because it is missing.
NVDEC_OUT="$(mktemp -d)"
"$PORTABLE" run graphs/extract-tiny.toml --set "stages.videos.dir=$DEMO/heldout/videos" \
  --set stages.videos.limit=1 --set stages.decode.decoder=nvdec --set "run.output_dir=$NVDEC_OUT" \
  --set stages.encode.device=cpu >"$NVDEC_OUT/log" 2>&1 || fail "extraction with decoder = nvdec: $(cat "$NVDEC_OUT/log")"
grep -q "_cuvid did not start" "$NVDEC_OUT/log" ||
  fail "the cuvid decoders are not in $PORTABLE: $(grep NVDEC "$NVDEC_OUT/log")"
log "cuvid decoders built in: $(grep -o 'NVDEC decoding unavailable.*' "$NVDEC_OUT/log")"
rm -rf "$NVDEC_OUT"

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
for split in train heldout grounding; do
  for build in default portable; do
    bin="$DEFAULT"
    [ "$build" = portable ] && bin="$PORTABLE"
    "$bin" run graphs/extract-tiny.toml \
      --set "stages.videos.dir=$DEMO/$split/videos" \
      --set "run.output_dir=$OUT/$build-$split" \
      --set stages.encode.device=cpu >"$OUT/$build-$split.log" 2>&1 ||
      fail "$build extraction of $split (log: $(cat "$OUT/$build-$split.log"))"
  done
done
python - "$OUT" <<'EOF' || fail "features differ between the default and the portable build"
import sys, h5py, numpy as np, pathlib
out = pathlib.Path(sys.argv[1])
total = 0
for split in ("train", "heldout", "grounding"):
    files = [next((out / f"{b}-{split}").glob("*.h5")) for b in ("default", "portable")]
    a, b = (h5py.File(f, "r") for f in files)
    names_a, names_b = set(a.keys()), set(b.keys())
    if names_a != names_b:
        sys.exit(f"{split}: videos differ: {sorted(names_a ^ names_b)}")
    for name in sorted(names_a):
        da, db = a[name], b[name]
        if isinstance(da, h5py.Group):
            da, db = da["c3d_features"], db["c3d_features"]
        x, y = np.asarray(da), np.asarray(db)
        if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
            sys.exit(f"{split}/{name}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}, "
                     f"max |diff| {np.abs(x.astype(np.float64) - y.astype(np.float64)).max() if x.shape == y.shape else 'n/a'}")
        total += x.shape[0]
    print(f"portable_check: {split}: {len(names_a)} videos, features bit-identical")
print(f"portable_check: {total} clip features bit-identical in all")
EOF

# --- 4. the integration tests, driving the portable binary -------------------
cargo build --locked -p locvtp-flow
LOCVTP_FLOW_BIN="$PORTABLE" cargo test --locked -p locvtp-tests ||
  fail "integration tests driving $PORTABLE"
log "all checks passed for $PORTABLE"
