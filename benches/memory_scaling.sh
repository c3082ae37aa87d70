#!/usr/bin/env bash
# Peak memory of one pre-training epoch against the corpus size: generated
# corpora of 40, 160 and 640 narrated videos with 15 caption clips each,
# the same shards and shuffle window, a thin C3D on 32x32 frames
# (benches/configs/c3d-bench.toml) on the CPU, batch 8.
# Prints one line per size: videos, caption clips, steps, wall seconds,
# peak RSS (MB, from summary.json).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${LOCVTP_FLOW:-$ROOT/target/release/locvtp-flow}"
SIZES="${SIZES:-40 160 640}"
printf '%8s %8s %6s %8s %12s\n' videos clips steps wall_s peak_rss_mb
for n in $SIZES; do
  dir="runs/corpus-$n"
  "$BIN" demo-data --corpus "$n" --out "$dir" 2>/dev/null
  "$BIN" run benches/graphs/pretrain-corpus.toml -q \
    --set "stages.videos.dir=$dir/videos" --set "stages.narration.dir=$dir/narration" \
    --set "run.output_dir=$dir/out" 2>"$dir/run.log"
  python3 - "$dir/out/summary.json" "$n" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
t = s["training"]
print(f'{sys.argv[2]:>8} {t["caption_clips"]:>8} {t["steps"]:>6} {s["wall_seconds"]:>8.1f} {s["peak_rss_mb"]:>12.1f}')
PY
done
