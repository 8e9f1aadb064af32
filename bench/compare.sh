#!/usr/bin/env bash
# medvlp vs the PyTorch reference on the same model (../shared/bench/torch_reference.py, 23.47M
# parameters), interleaved for several rounds in one invocation so that both see the same machine
# load; prints each round and the median ratios.
#
#   bench/compare.sh [--python PY] [--rounds N] [--reference PATH] [--cpu avx2]
#   bench/compare.sh --gpu [--device cuda:N] [--steps N] [--python PY] [--rounds N]
#
# --gpu compares the base size (ViT-B/16 224 px + BERT-base-sized text, batch 64, 7.39 TFLOP per
# step) on the GPU: `medvlp bench train-step --preset base --device cuda --precision bf16` against
# `torch_reference.py train --size base --device cuda --amp`, and reports the step-time ratio,
# the peak GPU memory of each (nvidia-smi, sampled every 100 ms) and MFU against the card's bf16
# peak. Build with `--features cuda` first (README, GPU section).
#
# Encoding is reported twice against torch_reference.py's `infer` (every token's final state): the
# pooled embedding as `medvlp embed`, `eval` and the server compute it (a CLS-pooled ViT runs its
# last block on the CLS token only; `images_per_s`, the target row) and the same all-token output
# (`all_tokens_images_per_s`, kernel for kernel).
#
# --cpu avx2 times both sides as an AVX2-class CPU (AMD Zen 2/3, Intel before Skylake-SP) would
# run them, on a CPU with AVX-512: medvlp with MEDVLP_CPU=avx2 from a build without the gemm
# crate's AVX-512 kernels (target/avx2, `cargo build -p medvlp --no-default-features`, built if
# missing), PyTorch with ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2 and
# ONEDNN_MAX_CPU_ISA=AVX2. fp32 only (such CPUs have no bf16 units).
#
# PyTorch lives in a virtual environment outside the repository, e.g.
#   python3 -m venv ~/.venvs/medvlp-torch && ~/.venvs/medvlp-torch/bin/pip install torch
# and is found through --python or $TORCH_PYTHON (default ~/.venvs/medvlp-torch/bin/python).
# The medvlp binary is target/release/medvlp (built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${TORCH_PYTHON:-$HOME/.venvs/medvlp-torch/bin/python}"
ROUNDS=3
REF="../shared/bench/torch_reference.py"
GPU=0
DEVICE=cuda
STEPS=10
CPU_CAP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --reference) REF="$2"; shift 2 ;;
    --gpu) GPU=1; shift ;;
    --device) DEVICE="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --cpu) CPU_CAP="$2"; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "no PyTorch at $PY: create the venv as described at the top of $0, or pass --python" >&2
  exit 2
fi
[ -f "$REF" ] || { echo "PyTorch reference $REF not found (--reference PATH)" >&2; exit 2; }
MV="${CARGO_TARGET_DIR:-target}/release/medvlp"
case "$CPU_CAP" in
  "") ;;
  avx2)
    [ "$GPU" = 0 ] || { echo "--cpu is for the CPU comparison" >&2; exit 2; }
    MV=target/avx2/release/medvlp
    [ -x "$MV" ] || cargo build --release -p medvlp --no-default-features --target-dir target/avx2
    export MEDVLP_CPU=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
    ;;
  *) echo "--cpu: only avx2 (got $CPU_CAP)" >&2; exit 2 ;;
esac
if [ ! -x "$MV" ]; then
  if [ "$GPU" = 1 ]; then cargo build --release --features cuda; else cargo build --release; fi
fi
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

if [ "$GPU" = 1 ]; then
  idx="${DEVICE#cuda}"; idx="${idx#:}"; idx="${idx:-0}"
  # Peak memory.used of GPU $idx while "$@" runs, in bytes, into $WORK_PEAK.
  with_peak() {
    local log; log=$(mktemp)
    nvidia-smi --id="$idx" --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log" 2>/dev/null &
    local smi=$!
    "$@"; local rc=$?
    kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
    WORK_PEAK=$(( $(sort -n "$log" | tail -1) * 1024 * 1024 )); rm -f "$log"
    return $rc
  }
  step_r=(); mem_r=(); mfu_r=(); tmfu_r=()
  for r in $(seq 1 "$ROUNDS"); do
    m_json=$(with_peak "$MV" bench train-step --preset base --device "$DEVICE" --precision bf16 --steps "$STEPS" 2>/dev/null) || { echo "medvlp bench failed" >&2; exit 1; }
    m_peak=$WORK_PEAK
    with_peak "$PY" "$REF" train --size base --device "$DEVICE" --amp --steps "$STEPS" >/tmp/medvlp-torch-gpu.log 2>&1 || { cat /tmp/medvlp-torch-gpu.log >&2; exit 1; }
    t_peak=$WORK_PEAK
    m_step=$(echo "$m_json" | field median_step_s)
    m_mfu=$(echo "$m_json" | field mfu)
    peak=$(echo "$m_json" | field peak_gflops)
    t_step=$(sed -n 's/^torch train: median step \([0-9.]*\) s.*/\1/p' /tmp/medvlp-torch-gpu.log)
    s=$(python3 -c "print(f'{$t_step/$m_step:.3f}')")
    mm=$(python3 -c "print(f'{$m_peak/$t_peak:.3f}')")
    t_mfu=$(python3 -c "print(f'{7.39e12/1e9/$t_step/${peak:-0}:.3f}' if '${peak}' else 'n/a')")
    step_r+=("$s"); mem_r+=("$mm"); mfu_r+=("${m_mfu:-0}"); tmfu_r+=("$t_mfu")
    echo "round $r ($(echo "$m_json" | sed -n 's/.*"device":"\([^"]*\)".*/\1/p')): step medvlp ${m_step}s torch ${t_step}s (torch/medvlp $s); peak GPU memory medvlp $((m_peak >> 20)) MiB torch $((t_peak >> 20)) MiB (ratio $mm); MFU medvlp $m_mfu torch $t_mfu"
  done
  echo "median over $ROUNDS rounds (base, bf16, $DEVICE): step speed-up (torch AMP time / medvlp time) $(median "${step_r[@]}") [target >= 1.0]; peak GPU memory medvlp/torch $(median "${mem_r[@]}"); MFU medvlp $(median "${mfu_r[@]}") [target >= 0.40], torch $(median "${tmfu_r[@]}")"
  exit 0
fi
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
isa="fp32"; case "$flags" in *avx512_bf16*) isa="avx512_bf16";; esac; case "$flags" in *amx_tile*) isa="$isa+amx";; esac
[ -z "$CPU_CAP" ] || isa="$isa, capped at $CPU_CAP: medvlp $("$MV" bench encode --preset tiny --steps 1 2>/dev/null | sed -n 's/.*"cpu_level":"\([^"]*\)".*/\1/p'), PyTorch $("$PY" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')"
echo "CPU: $cpu ($(nproc) threads; $isa); PyTorch $("$PY" -c 'import torch; print(torch.__version__)')"
step_r=(); enc_r=(); encall_r=(); rss_r=(); mfu_r=(); bstep_r=(); benc_r=(); bencall_r=()
# bf16 rows only without --cpu (the capped levels have no bf16 units).
if [ -z "$CPU_CAP" ]; then BF16=1; ENC_ARGS=(--bf16); else BF16=0; ENC_ARGS=(); fi
for r in $(seq 1 "$ROUNDS"); do
  m_json=$("$MV" bench train-step --preset reference 2>/dev/null)
  m_step=$(echo "$m_json" | field median_step_s)
  m_rss=$(echo "$m_json" | field peak_rss_bytes)
  m_mfu=$(echo "$m_json" | field mfu)
  m_path=$(echo "$m_json" | sed -n 's/.*"kernel_path":"\([^"]*\)".*/\1/p')
  t_out=$(/usr/bin/time -f 'RSS %M' "$PY" "$REF" train 2>&1)
  t_step=$(echo "$t_out" | sed -n 's/^torch train: median step \([0-9.]*\) s.*/\1/p')
  t_rss=$(( $(echo "$t_out" | sed -n 's/^RSS \([0-9]*\)$/\1/p') * 1024 ))
  e_json=$("$MV" bench encode --preset reference "${ENC_ARGS[@]}" 2>/dev/null)
  m_enc=$(echo "$e_json" | field images_per_s)
  m_enc_all=$(echo "$e_json" | field all_tokens_images_per_s)
  t_enc=$("$PY" "$REF" infer 2>&1 | sed -n 's/.*-> \([0-9.]*\) images\/s.*/\1/p')
  s=$(python3 -c "print(f'{$t_step/$m_step:.3f}')"); e=$(python3 -c "print(f'{$m_enc/$t_enc:.3f}')"); m=$(python3 -c "print(f'{$m_rss/$t_rss:.3f}')")
  ea=$(python3 -c "print(f'{$m_enc_all/$t_enc:.3f}')")
  step_r+=("$s"); enc_r+=("$e"); encall_r+=("$ea"); rss_r+=("$m"); mfu_r+=("$m_mfu")
  fp32="fp32 ($m_path) train step medvlp ${m_step}s torch ${t_step}s (torch/medvlp $s, medvlp MFU $m_mfu)"
  enc32="encode fp32 medvlp embedding ${m_enc}, all tokens ${m_enc_all}, torch all tokens ${t_enc} images/s (ratios $e, $ea)"
  if [ "$BF16" = 0 ]; then
    echo "round $r: $fp32; $enc32; peak RSS medvlp/torch $m"
    continue
  fi
  b_json=$("$MV" bench train-step --preset reference --precision bf16 2>/dev/null)
  b_step=$(echo "$b_json" | field median_step_s)
  b_path=$(echo "$b_json" | sed -n 's/.*"kernel_path":"\([^"]*\)".*/\1/p')
  ta_step=$("$PY" "$REF" train --amp 2>&1 | sed -n 's/^torch train: median step \([0-9.]*\) s.*/\1/p')
  m_enc16=$(echo "$e_json" | field bf16_images_per_s)
  m_enc16_all=$(echo "$e_json" | field bf16_all_tokens_images_per_s)
  t_enc16=$("$PY" "$REF" infer --bf16 2>&1 | sed -n 's/.*-> \([0-9.]*\) images\/s.*/\1/p')
  bs=$(python3 -c "print(f'{$ta_step/$b_step:.3f}')"); be=$(python3 -c "print(f'{$m_enc16/$t_enc16:.3f}')")
  bea=$(python3 -c "print(f'{$m_enc16_all/$t_enc16:.3f}')")
  bstep_r+=("$bs"); benc_r+=("$be"); bencall_r+=("$bea")
  echo "round $r: $fp32; bf16 ($b_path) train step medvlp ${b_step}s torch --amp ${ta_step}s (ratio $bs); $enc32; encode bf16 medvlp embedding ${m_enc16}, all tokens ${m_enc16_all}, torch ${t_enc16} (ratios $be, $bea); peak RSS medvlp/torch $m"
done
fp32_step="train-step speed-up fp32 (torch time / medvlp time) $(median "${step_r[@]}") [target >= 1.25]"
rest="encode fp32 ratio $(median "${enc_r[@]}") [target >= 1.3] (all tokens $(median "${encall_r[@]}"))"
tail_="peak RSS medvlp/torch $(median "${rss_r[@]}") [target <= 0.5]; MFU $(median "${mfu_r[@]}")"
if [ "$BF16" = 0 ]; then
  echo "median over $ROUNDS rounds on $cpu capped at $CPU_CAP: $fp32_step; $rest; $tail_"
else
  echo "median over $ROUNDS rounds on $cpu: $fp32_step; bf16 (torch --amp time / medvlp bf16 time) $(median "${bstep_r[@]}") [target >= 1.25]; $rest; encode bf16 ratio $(median "${benc_r[@]}") [target >= 1.0] (all tokens $(median "${bencall_r[@]}")); $tail_"
fi
