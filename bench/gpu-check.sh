#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, in a few minutes,
#   1. builds medvlp with --features nccl (CUDA and NCCL),
#   2. runs the test suite with the GPU as the test device (MEDVLP_TEST_DEVICE),
#   3. trains xlip-base (bf16) briefly on synthetic data, stops it with SIGTERM after its first
#      checkpoint and resumes it to the end, then the same on every GPU through medvlp launch
#      (NCCL data parallel),
#   4. runs `medvlp bench train-step --preset base --device cuda --precision bf16` (and PyTorch's
#      `torch_reference.py train --size base --device cuda --amp` beside it when TORCH_PYTHON
#      points at a Python with a CUDA torch),
#   5. runs the quickstart on the GPU with a short budget,
# and prints one summary. Every stage runs even when an earlier one failed (except after a failed
# build); the exit code is the number of failed stages.
#
#   bench/gpu-check.sh [--device cuda:N] [--quick]     # --quick: no quickstart, 3 bench steps
#
# Toolchain: $CUDA_HOME or an nvcc on PATH when present, else scripts/cuda-toolchain.sh (PyPI).
# On a machine without a GPU it still builds and runs the tests on the CPU (the composed-path
# tests are the code a GPU runs) and says that the GPU stages were skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
WORK="${GPU_CHECK_DIR:-$(mktemp -d /tmp/medvlp-gpu-check.XXXXXX)}"
mkdir -p "$WORK"
SUMMARY=()
FAILED=0
note() { SUMMARY+=("$1"); echo "== $1"; }
stage() { # name, command...
  local name="$1"; shift
  local t0=$SECONDS
  if "$@" >"$WORK/$name.log" 2>&1; then
    note "$name: ok ($((SECONDS - t0)) s)"
  else
    note "$name: FAILED ($((SECONDS - t0)) s; log $WORK/$name.log)"
    tail -20 "$WORK/$name.log"
    FAILED=$((FAILED + 1))
    return 1
  fi
}

if [ -z "${CUDA_HOME:-}" ] && ! command -v nvcc >/dev/null; then
  eval "$(scripts/cuda-toolchain.sh)"
fi
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
GPU="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
note "machine: ${GPU:-no GPU visible (nvidia-smi)}; CPU $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"

stage build cargo build --release --features nccl || { printf '%s\n' "${SUMMARY[@]}"; exit 1; }
MV="${CARGO_TARGET_DIR:-target}/release/medvlp"
HAVE_GPU=0
if env -u RUST_BACKTRACE "$MV" bench forward --preset tiny --batch 2 --steps 1 --device "$DEVICE" >"$WORK/probe.log" 2>&1; then
  HAVE_GPU=1
else
  note "no usable GPU: $(grep -m1 '^Error' "$WORK/probe.log")"
fi
TEST_DEVICE=cpu
[ "$HAVE_GPU" = 1 ] && TEST_DEVICE="$DEVICE"
MEDVLP_TEST_DEVICE="$TEST_DEVICE" stage "tests-on-$TEST_DEVICE" \
  cargo test --release --features nccl --workspace

if [ "$HAVE_GPU" = 1 ]; then
  # 3. xlip-base, bf16: SIGTERM after the first checkpoint, then --resume to the end.
  train() {
    "$MV" synth --out "$WORK/synth" --n 512 --image-only 128 --text-only 128 --size 224 >/dev/null &&
    local args=(--config configs/xlip-base.toml --out "$WORK/xlip-base" --device "$DEVICE" --precision bf16
      data.manifest="$WORK/synth/manifest.jsonl" data.image_only="$WORK/synth/image_only.jsonl"
      data.text_only="$WORK/synth/text_only.jsonl" data.batch_size=32 train.steps=40
      train.warmup_steps=5 train.checkpoint_every=10 train.log_every=5 train.validate_every=0)
    "$MV" train "${args[@]}" &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null && [ ! -f "$WORK/xlip-base/checkpoints/step-00000010/manifest.json" ]; do sleep 1; done
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"; local rc=$?
    echo "first part exited $rc (143 = stopped by SIGTERM after a checkpoint)"
    [ "$rc" = 143 ] || [ "$rc" = 0 ] || return 1
    "$MV" train "${args[@]}" --resume
  }
  stage xlip-base-train-resume train

  # 3b. Data parallel over NCCL: one rank per GPU through `medvlp launch` (world size 1 on a
  # single GPU: a real NCCL communicator of one rank), scaling against the run above.
  NGPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
  ddp() {
    "$MV" launch --nproc-per-node "$NGPU" -- train --config configs/xlip-base.toml --out "$WORK/xlip-ddp" \
      --device cuda --precision bf16 data.manifest="$WORK/synth/manifest.jsonl" \
      data.image_only="$WORK/synth/image_only.jsonl" data.text_only="$WORK/synth/text_only.jsonl" \
      data.batch_size=32 train.steps=20 train.warmup_steps=5 train.checkpoint_every=0 train.log_every=5 \
      train.validate_every=0
  }
  if stage "ddp-nccl-${NGPU}gpu" ddp; then
    one=$(grep '"kind":"train"' "$WORK/xlip-base/metrics.jsonl" | tail -1 | sed -n 's/.*"samples_per_s":\([0-9.e+-]*\).*/\1/p')
    many=$(grep '"kind":"train"' "$WORK/xlip-ddp/metrics.jsonl" | tail -1 | sed -n 's/.*"samples_per_s":\([0-9.e+-]*\).*/\1/p')
    note "data parallel: $NGPU GPU(s) $many samples/s (rank 0), one GPU $one samples/s; scaling efficiency $(python3 -c "print(f'{$many/$one:.2f}')" 2>/dev/null) (same batch per GPU)"
    [ "$NGPU" = 1 ] && note "multi-GPU scaling not measurable on one GPU"
  fi

  # 4. The base-size training step against PyTorch AMP on the same card.
  STEPS=10; [ "$QUICK" = 1 ] && STEPS=3
  stage bench-base-bf16 "$MV" bench train-step --preset base --device "$DEVICE" --precision bf16 --steps "$STEPS"
  if [ -n "${TORCH_PYTHON:-}" ]; then
    stage bench-vs-torch bench/compare.sh --gpu --device "$DEVICE" --python "$TORCH_PYTHON" --rounds 1 --steps "$STEPS"
  else
    note "bench-vs-torch: skipped (set TORCH_PYTHON to a Python with a CUDA torch)"
  fi

  # 5. The quickstart on the GPU.
  if [ "$QUICK" = 0 ]; then
    stage quickstart "$MV" quickstart --out "$WORK/quickstart" --device "$DEVICE" --budget-minutes 3
  fi
else
  note "GPU stages (training + resume, bench, quickstart): skipped, no GPU"
fi

echo
echo "==== medvlp GPU check ($WORK)"
printf '%s\n' "${SUMMARY[@]}"
for f in bench-base-bf16 bench-vs-torch; do
  [ -f "$WORK/$f.log" ] && { echo "-- $f"; grep -E '^\{|ratio|median' "$WORK/$f.log" | tail -3; }
done
[ -f "$WORK/quickstart.log" ] && { echo "-- quickstart"; tail -15 "$WORK/quickstart.log"; }
exit "$FAILED"
