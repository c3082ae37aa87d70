#!/usr/bin/env bash
# The GPU benchmark in one go, for a CUDA machine that has PyTorch and
# nothing else:
#
#   1. extraction end to end with the portable locvtp-flow
#      (scripts/portable.sh): `locvtp-flow bench` over generated videos of
#      two sizes (640x272 and 1280x720; without an ffmpeg command line they
#      come from locvtp-flow's own generator, MPEG-4 part 2 in the portable
#      build), every core decoding, the released C3D encoding on the GPU,
#      against its decode half (all cores) and encode half measured in the
#      same run: $OUT/e2e/bench.json, decoding on the CPU;
#   2. gpu-bench (the Rust model through libtorch) and torch_reference.py
#      (the same computation in PyTorch), C3D extraction and LocVTP training
#      steps at the released sizes, fp32 and bf16 autocast, on the same GPU:
#      $OUT/gpu_bench.json (every measurement plus a Rust/PyTorch comparison);
#   3. step 1 again with the GPU's video decoder (`--decoder nvdec`, FFmpeg's
#      cuvid decoders in the portable build; where the driver does not start
#      them the log says so and decoding stays on the CPU, which
#      `nvdec_passes` in $OUT/e2e-nvdec/bench.json shows): last, so that the
#      measurements above come first within the budget.
#
# The log of everything is $OUT/gpu_bench.log. From a checkout where
# scripts/portable.sh has built dist/locvtp-flow and dist/gpu-bench (29 MB
# together: ignored files a device run can carry):
#
#   bash benches/gpu/run_on_device.sh
#
# Settings (environment): GPU_BENCH (the binary; default ./gpu-bench beside
# this script, else dist/gpu-bench, else target/release/gpu-bench of the
# checkout), PYTHON
# (python3), DEVICE (cuda), MODEL (full), EXTRACT_BATCH (32), TRAIN_BATCH (8),
# WARMUP (3), ITERS (10), BUDGET (seconds for all commands together, 480:
# a command gets what is left, and none starts with under 30 s left);
# LOCVTP_FLOW (the portable binary; default ./locvtp-flow beside this
# script, else dist/locvtp-flow of the checkout), E2E_MODEL (the checkout's
# configs/c3d-full.toml), E2E_COUNT (videos per size, 16), E2E_SECONDS (4).
# DEVICE=cpu MODEL=tiny EXTRACT_BATCH=4 TRAIN_BATCH=2 ITERS=2 WARMUP=1 checks
# the plumbing on a machine without a GPU.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
MODEL="${MODEL:-full}"
EXTRACT_BATCH="${EXTRACT_BATCH:-32}"
TRAIN_BATCH="${TRAIN_BATCH:-8}"
WARMUP="${WARMUP:-3}"
ITERS="${ITERS:-10}"
BUDGET="${BUDGET:-480}"
OUTDIR="${OUT:-$HERE/out}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_bench.log"
LINES="$OUTDIR/gpu_bench.jsonl"
: >"$LOG"
: >"$LINES"

BIN="${GPU_BENCH:-}"
if [ -z "$BIN" ]; then
  for c in "$HERE/gpu-bench" "$HERE/../../dist/gpu-bench" "$HERE/../../target/release/gpu-bench"; do
    if [ -x "$c" ]; then BIN="$c"; break; fi
  done
fi
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  echo "error: no gpu-bench binary (put it beside this script or set GPU_BENCH)" | tee -a "$LOG" >&2
  exit 1
fi
REF="$HERE/torch_reference.py"

log() { printf '%s\n' "$*" | tee -a "$LOG" >&2; }

# The binary links libtorch by name: take the one of this machine's torch.
TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" || {
  log "error: $PY cannot import torch"
  exit 1
}
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

log "== machine"
log "$(date -u +%FT%TZ) $(uname -srm)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG" >&2
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>&1 | tee -a "$LOG" >&2
log "binary: $BIN"
log "torch lib: $TORCH_LIB"
log "$(ldd "$BIN" 2>&1 | grep -E 'torch|c10|not found' || true)"
if ldd "$BIN" | grep -q 'not found'; then
  log "error: the binary has unresolved libraries (above)"
  exit 1
fi

status=0
BEGIN=$SECONDS
# Each command prints JSON lines (kept) and progress (logged). One that
# fails or hangs is logged and the rest still run, within the budget.
run() {
  local left=$((BUDGET - (SECONDS - BEGIN)))
  if [ "$left" -lt 30 ]; then
    log "== skipped (budget of $BUDGET s spent): $*"
    status=1
    return
  fi
  log "== $*"
  local start=$SECONDS
  timeout "$left" "$@" 2>>"$LOG" | tee -a "$LINES" >>"$LOG"
  local rc=${PIPESTATUS[0]}
  log "-- exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=1
}

# 1. Extraction end to end, first: it is what no earlier run has measured.
FLOW="${LOCVTP_FLOW:-}"
if [ -z "$FLOW" ]; then
  for c in "$HERE/locvtp-flow" "$HERE/../../dist/locvtp-flow"; do
    if [ -x "$c" ]; then FLOW="$c"; break; fi
  done
fi
if [ -n "$FLOW" ]; then
  log "portable binary: $FLOW ($(ldd "$FLOW" 2>&1 | grep -c 'not found') unresolved libraries)"
  E2E_MODEL="${E2E_MODEL:-$HERE/../../configs/c3d-full.toml}"
  run "$FLOW" bench --no-python --no-decode --device "$DEVICE" --model "$E2E_MODEL" \
    --batch-size "$EXTRACT_BATCH" --count "${E2E_COUNT:-16}" --seconds "${E2E_SECONDS:-4}" --out "$OUTDIR/e2e"
else
  log "== no portable locvtp-flow (run scripts/portable.sh, or set LOCVTP_FLOW): end-to-end extraction skipped"
  status=1
fi

# 2. The model alone, against PyTorch.
common=(--device "$DEVICE" --model "$MODEL" --warmup "$WARMUP" --iters "$ITERS"
  --extract-batch "$EXTRACT_BATCH" --train-batch "$TRAIN_BATCH")
# Rust and PyTorch alternate task by task, so that clock or thermal drift
# over the run does not favour one side.
for task in extract train; do
  run "$BIN" "${common[@]}" --task "$task" --precision both
  run "$PY" "$REF" "${common[@]}" --task "$task" --precision both
done
# The classic contiguous NCDHW input, against the channels-last input that
# the decoder's frame layout gives for free.
run "$BIN" "${common[@]}" --task extract --precision both --layout contiguous
run "$PY" "$REF" "${common[@]}" --task extract --precision both --layout contiguous

# 3. Extraction end to end again, decoding on the GPU's video decoder.
if [ -n "$FLOW" ]; then
  run "$FLOW" bench --no-python --no-decode --device "$DEVICE" --model "$E2E_MODEL" --decoder nvdec \
    --batch-size "$EXTRACT_BATCH" --count "${E2E_COUNT:-16}" --seconds "${E2E_SECONDS:-4}" --out "$OUTDIR/e2e-nvdec"
fi

"$PY" - "$LINES" "$OUTDIR/gpu_bench.json" <<'PYEOF' 2>&1 | tee -a "$LOG" >&2
import json, sys
lines, out = sys.argv[1], sys.argv[2]
results = [json.loads(l) for l in open(lines) if l.startswith("{")]
key = lambda r: (r["task"], r["precision"], r["layout"])
rust = {key(r): r for r in results if r["impl"] == "rust-tch"}
torch = {key(r): r for r in results if r["impl"] == "pytorch"}
comparison = []
print(f"{'task':<8} {'precision':<14} {'layout':<14} {'rust':>10} {'pytorch':>10} {'rust/pytorch':>13}")
for k in sorted(set(rust) | set(torch)):
    r, t = rust.get(k), torch.get(k)
    row = {"task": k[0], "precision": k[1], "layout": k[2], "unit": (r or t)["unit"] + "/s",
           "rust_per_s": r and r["per_s"], "pytorch_per_s": t and t["per_s"],
           "rust_over_pytorch": (r["per_s"] / t["per_s"]) if r and t else None}
    comparison.append(row)
    fmt = lambda v: f"{v:10.1f}" if v is not None else f"{'-':>10}"
    ratio = f"{row['rust_over_pytorch']:13.3f}" if row["rust_over_pytorch"] else f"{'-':>13}"
    print(f"{k[0]:<8} {k[1]:<14} {k[2]:<14} {fmt(row['rust_per_s'])} {fmt(row['pytorch_per_s'])} {ratio}  {row['unit']}")
json.dump({"results": results, "comparison": comparison}, open(out, "w"), indent=1)
print("wrote", out)
PYEOF
rm -f "$LINES"
exit $status
