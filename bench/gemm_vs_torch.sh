#!/usr/bin/env bash
# GEMM throughput on the reference model's shapes (bench/compare.sh's model: 32 images x 65 tokens,
# width 256, MLP 1024): medvlp's products from f32 operands (fp32 through the `gemm` crate and
# through nn/fused/gemm512.rs's FMA tiles, bf16 through every bf16 path this CPU runs, see
# nn/fused/bf16_gemm.rs) against torch.matmul with the same number of threads: fp32, bf16 on bf16
# tensors (the GEMM alone) and bf16 autocast from f32 tensors (casts included, as in
# `torch_reference.py --amp`). Both sides report the best of 5 batches of calls. Prints the CPU and
# GFLOP/s per shape.
#
#   bench/gemm_vs_torch.sh [--python PY]
#
# PyTorch comes from a venv outside the repository (see bench/compare.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${TORCH_PYTHON:-$HOME/.venvs/medvlp-torch/bin/python}"
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
"$PY" -c 'import torch' 2>/dev/null || { echo "no PyTorch at $PY (--python PY)" >&2; exit 2; }
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1) ($(nproc) threads)"
echo "medvlp (cargo test --release -p medvlp-model --lib bf16_gemm_speed):"
cargo test --release -q -p medvlp-model --lib bf16_gemm_speed -- --ignored --nocapture --test-threads=1 2>/dev/null |
  grep -E "GFLOP/s" | grep -v rounded | sed 's/^test .* \.\.\. //; s/^/  /'
echo "PyTorch $("$PY" -c 'import torch; print(torch.__version__)'):"
"$PY" - <<'EOF'
import os, time, torch
torch.set_num_threads(os.cpu_count())
# (m, n, k, layout) as in bf16_gemm_speed: rhs^T multiplies by a transposed [n, k] weight,
# lhs^T is the weight gradient g^T x.
shapes = [(2080, 1024, 256, "rhs^T"), (2080, 256, 1024, "rhs^T"), (256, 1024, 2080, "lhs^T"),
          (2080, 256, 256, "rhs^T"), (65, 65, 64, "rhs^T")]
def best(f, reps):
    f()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        ts.append((time.perf_counter() - t) / reps)
    return min(ts)
with torch.no_grad():
    for m, n, k, lay in shapes:
        a = torch.randn(k, m).t() if lay == "lhs^T" else torch.randn(m, k)
        b = torch.randn(n, k).t() if lay == "rhs^T" else torch.randn(k, n)
        a16, b16 = a.bfloat16(), b.bfloat16()
        reps = 200 if m * n * k < 1 << 20 else 5
        flops = 2.0 * m * n * k
        def amp():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return a @ b
        out = []
        for name, f in [("fp32", lambda: a @ b), ("bf16 tensors", lambda: a16 @ b16), ("autocast", amp)]:
            s = best(f, reps)
            out.append(f"{name} {flops / s / 1e9:.1f} GFLOP/s")
        print(f"  {m}x{n}x{k} {lay}: " + ", ".join(out))
EOF
