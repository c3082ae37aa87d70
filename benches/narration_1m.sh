#!/usr/bin/env bash
# The narration stage on a HowTo100M-format caption.json of a million videos
# (678 MB, 15 cues each, benches/caption_json.py): one pre-training epoch of
# the 40-video generated corpus (benches/memory_scaling.sh makes it) with its
# narration read from that file. The log line of the narration stage gives
# MB/s and how many listed videos it kept; summary.json the peak RSS, to
# compare with the same run on the corpus's own narration folder.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${LOCVTP_FLOW:-$ROOT/target/release/locvtp-flow}"
mkdir -p runs/narration-1m
[ -f runs/narration-1m/caption.json ] || python3 benches/caption_json.py --videos 1000000 --out runs/narration-1m/caption.json
[ -d runs/corpus-40 ] || "$BIN" demo-data --corpus 40 --out runs/corpus-40
sed 's|^dir = "../../runs/corpus/narration"|file = "../../runs/narration-1m/caption.json"|' \
  benches/graphs/pretrain-corpus.toml > runs/narration-1m/pretrain-json.toml
"$BIN" run runs/narration-1m/pretrain-json.toml -q --set stages.videos.dir=runs/corpus-40/videos \
  --set run.output_dir=runs/narration-1m/out 2>&1 | grep "MB read"
python3 -c "import json; s=json.load(open('runs/narration-1m/out/summary.json')); print('peak RSS', round(s['peak_rss_mb'], 1), 'MB')"
