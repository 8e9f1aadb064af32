#!/usr/bin/env bash
# medvlp vs the PyTorch reference on the same model (../shared/bench/torch_reference.py, 23.47M
# parameters), interleaved for several rounds in one invocation so that both see the same machine
# load; prints each round and the median ratios.
#
#   bench/compare.sh [--python PY] [--rounds N] [--reference PATH]
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
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --reference) REF="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "no PyTorch at $PY: create the venv as described at the top of $0, or pass --python" >&2
  exit 2
fi
[ -f "$REF" ] || { echo "PyTorch reference $REF not found (--reference PATH)" >&2; exit 2; }
[ -x target/release/medvlp ] || cargo build --release
MV=target/release/medvlp
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p"; }
step_r=(); enc_r=(); rss_r=(); mfu_r=()
for r in $(seq 1 "$ROUNDS"); do
  m_json=$("$MV" bench train-step --preset reference 2>/dev/null)
  m_step=$(echo "$m_json" | field median_step_s)
  m_rss=$(echo "$m_json" | field peak_rss_bytes)
  m_mfu=$(echo "$m_json" | field mfu)
  t_out=$(/usr/bin/time -f 'RSS %M' "$PY" "$REF" train 2>&1)
  t_step=$(echo "$t_out" | sed -n 's/^torch train: median step \([0-9.]*\) s.*/\1/p')
  t_rss=$(( $(echo "$t_out" | sed -n 's/^RSS \([0-9]*\)$/\1/p') * 1024 ))
  m_enc=$("$MV" bench encode --preset reference 2>/dev/null | field images_per_s)
  t_enc=$("$PY" "$REF" infer 2>&1 | sed -n 's/.*-> \([0-9.]*\) images\/s.*/\1/p')
  s=$(python3 -c "print(f'{$t_step/$m_step:.3f}')"); e=$(python3 -c "print(f'{$m_enc/$t_enc:.3f}')"); m=$(python3 -c "print(f'{$m_rss/$t_rss:.3f}')")
  step_r+=("$s"); enc_r+=("$e"); rss_r+=("$m"); mfu_r+=("$m_mfu")
  echo "round $r: train step medvlp ${m_step}s torch ${t_step}s (torch/medvlp $s, medvlp MFU $m_mfu); encode medvlp ${m_enc} torch ${t_enc} images/s (ratio $e); peak RSS medvlp/torch $m"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "median over $ROUNDS rounds: train-step speed-up (torch time / medvlp time) $(median "${step_r[@]}") [target >= 1.25]; encode ratio $(median "${enc_r[@]}") [target >= 1.3]; peak RSS medvlp/torch $(median "${rss_r[@]}") [target <= 0.5]; MFU $(median "${mfu_r[@]}") [target >= 0.6 of a 320 GFLOP/s peak]"
