#!/usr/bin/env bash
# Extraction throughput of one graph on the same videos with one worker,
# two worker threads (-w 2), and two processes on loopback (-n 2), printed
# as clips/s and as ratios to the single worker. Run after scripts/demo.sh
# (it uses the release binary and the demo videos):
#
#   bash benches/cluster_scaling.sh [VIDEO_DIR] [MODEL_CONFIG]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${BIN:-target/release/locvtp-flow}"
VIDEOS="$(realpath "${1:-data/demo/train/videos}")"
MODEL="$(realpath "${2:-configs/c3d-small.toml}")"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

graph() {
  cat >"$WORK/$1.toml" <<TOML
[run]
output_dir = "$WORK/$1"
[stages.videos]
type = "video_files"
dir = "$VIDEOS"
[stages.decode]
type = "decode"
inputs = ["videos"]
threads = 1
[stages.clips]
type = "dense_clips"
inputs = ["decode"]
[stages.encode]
type = "c3d_encode"
inputs = ["clips"]
model = "$MODEL"
device = "cpu"
batch_size = 8
[stages.write]
type = "hdf5_writer"
inputs = ["encode"]
TOML
}

clips_per_s() { python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"{s['clips']/s['wall_seconds']:.2f}\")" "$1"; }

graph w1; "$BIN" run "$WORK/w1.toml" -q
graph w2; "$BIN" run "$WORK/w2.toml" -q -w 2
graph n2
printf '127.0.0.1:%s\n127.0.0.1:%s\n' 23101 23102 >"$WORK/hosts"
# The two processes prove a secret of this run to each other.
(umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$WORK/secret")
"$BIN" run "$WORK/n2.toml" -q -n 2 -p 1 -H "$WORK/hosts" --secret-file "$WORK/secret" &
"$BIN" run "$WORK/n2.toml" -q -n 2 -p 0 -H "$WORK/hosts" --secret-file "$WORK/secret"
wait
W1=$(clips_per_s "$WORK/w1/summary.json"); W2=$(clips_per_s "$WORK/w2/summary.json"); N2=$(clips_per_s "$WORK/n2/summary.json")
echo "videos: $VIDEOS  model: $MODEL  cores: $(nproc)"
printf '%-24s %10s %8s\n' run clips/s ratio
printf '%-24s %10s %8s\n' "-w 1" "$W1" 1.00
printf '%-24s %10s %8.2f\n' "-w 2" "$W2" "$(python3 -c "print($W2/$W1)")"
printf '%-24s %10s %8.2f\n' "-n 2 (loopback)" "$N2" "$(python3 -c "print($N2/$W1)")"
