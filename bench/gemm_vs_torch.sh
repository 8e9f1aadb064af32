#!/usr/bin/env bash
# GEMM throughput on the reference model's shapes (bench/compare.sh's model: 32 images x 65 tokens,
# width 256, MLP 1024): medvlp's products from f32 operands (fp32 through the `gemm` crate and
# through nn/fused/gemm512.rs's FMA tiles, bf16 through every bf16 path this CPU runs, see
# nn/fused/bf16_gemm.rs) against torch.matmul with the same number of threads: fp32, bf16 on bf16
# tensors (the GEMM alone) and bf16 autocast from f32 tensors (casts included, as in
# `torch_reference.py --amp`). Both sides report the best of 5 batches of calls. Prints the CPU and
# GFLOP/s per shape.
#
#   bench/gemm_vs_torch.sh [--python PY] [--step [--rounds N]]
#
# --step: fp32 only, the reference training step's dense-layer products in their three roles
# (forward x W^T, input gradient g W, weight gradient g^T x; vision encoder 544 rows, text encoder
# 2048, MAE decoder 2080, MLM head 320), ours as the dense layer's op runs them in a training step
# (`fp32 step`: weight gradients and the MLM head's input gradient split over k, GELU layers'
# weights packed per call; nn/fused/linear.rs) against torch.matmul, then per role the step's
# total at these speeds (each product times its count per step): which products keep the step
# from PyTorch's GEMM speed. The two sides alternate for N rounds (default 3) and each shape keeps
# its best time: a shared host only slows one down.
#
# PyTorch comes from a venv outside the repository (see bench/compare.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${TORCH_PYTHON:-$HOME/.venvs/medvlp-torch/bin/python}"
STEP=0
ROUNDS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY="$2"; shift 2 ;;
    --step) STEP=1; shift ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
"$PY" -c 'import torch' 2>/dev/null || { echo "no PyTorch at $PY (--python PY)" >&2; exit 2; }
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1) ($(nproc) threads)"
# Both modes time torch.matmul alike: all threads, the best of 5 batches of `reps` calls.
TORCH_TIMING='import os, time, torch
torch.set_num_threads(os.cpu_count())
def best(f, reps):
    f()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        ts.append((time.perf_counter() - t) / reps)
    return min(ts)'
if [ "$STEP" = 1 ]; then
  # rows, in, out, products per step, GELU (crates/medvlp/src/cmd/bench_reference.rs at the
  # reference size): the vision encoder's 544 visible tokens (q, k, v and the output projection
  # of 4 layers, then the MLP), the text encoder's 2048 tokens, the MAE decoder's 2080 (its input
  # and output projections too), the MLM head's 320 masked tokens (dense layer, vocabulary)
  LAYERS="544,256,256,16,0 544,256,1024,4,1 544,1024,256,4,0 2048,256,256,16,0 2048,256,1024,4,1
2048,1024,256,4,0 544,256,128,1,0 2080,128,128,8,0 2080,128,512,2,1 2080,512,128,2,0
2080,128,256,1,0 320,256,256,1,1 320,256,30522,1,0"
  # m,n,k,lhs_t,rhs_t,gelu,count,role
  LIST=$(for l in $LAYERS; do
    IFS=, read -r r i o c gelu <<<"$l"
    echo "$r,$o,$i,0,1,$gelu,$c,forward"
    echo "$r,$i,$o,0,0,0,$c,input-grad"
    echo "$o,$i,$r,1,0,0,$c,weight-grad"
  done)
  SHAPES=$(echo "$LIST" | cut -d, -f1-6 | paste -sd';')
  cargo test --release -q -p medvlp-model --lib --no-run 2>/dev/null
  echo "PyTorch $("$PY" -c 'import torch; print(torch.__version__)'), $ROUNDS rounds alternating medvlp and torch, best per shape"
  { echo "$TORCH_TIMING"; cat <<'EOF'; } | LIST="$LIST" SHAPES="$SHAPES" ROUNDS="$ROUNDS" "$PY" -
import re, subprocess
rows = [l.split(",") for l in os.environ["LIST"].split()]
def ours():
    env = dict(os.environ, MEDVLP_SPEED_SHAPES=os.environ["SHAPES"], MEDVLP_SPEED_FP32_ONLY="1")
    out = subprocess.run(["cargo", "test", "--release", "-q", "-p", "medvlp-model", "--lib",
                          "bf16_gemm_speed", "--", "--ignored", "--nocapture", "--test-threads=1"],
                         env=env, capture_output=True, text=True).stdout
    lines = [l for l in out.splitlines() if "fp32 step" in l]
    assert len(lines) == len(rows), "medvlp printed %d shapes of %d" % (len(lines), len(rows))
    path = re.search(r"fp32 default \(([^)]*)\)", out).group(1)
    return [float(re.search(r"([0-9.]+) ms", l).group(1)) for l in lines], path
def theirs():
    ts = []
    with torch.no_grad():
        for m, n, k, lt, rt, _, _, _ in rows:
            m, n, k = int(m), int(n), int(k)
            a = torch.randn(k, m).t() if lt == "1" else torch.randn(m, k)
            b = torch.randn(n, k).t() if rt == "1" else torch.randn(k, n)
            ts.append(best(lambda: a @ b, 200 if m * n * k < 1 << 20 else 5) * 1e3)
    return ts
o_best, t_best = [float("inf")] * len(rows), [float("inf")] * len(rows)
for r in range(int(os.environ["ROUNDS"])):
    o, path = ours()
    t = theirs()
    o_best = [min(x, y) for x, y in zip(o_best, o)]
    t_best = [min(x, y) for x, y in zip(t_best, t)]
print(f"medvlp fp32 path {path}; products as the step runs them (fp32 step)")
tot = {}
for (m, n, k, lt, rt, gelu, count, role), o, t in zip(rows, o_best, t_best):
    g = 2.0 * int(m) * int(n) * int(k) / 1e6
    print(f"  {role:11s} {m}x{n}x{k}: medvlp {g / o:.0f} GFLOP/s, torch {g / t:.0f}")
    s = tot.setdefault(role, [0.0, 0.0])
    s[0] += int(count) * o
    s[1] += int(count) * t
print("per step (each product times its count), medvlp vs torch:")
for role, (o, t) in tot.items():
    print(f"  {role:11s} {o:.1f} ms vs {t:.1f} ms (torch/medvlp {t / o:.2f})")
o, t = (sum(v[i] for v in tot.values()) for i in (0, 1))
print(f"  {'all':11s} {o:.1f} ms vs {t:.1f} ms (torch/medvlp {t / o:.2f})")
EOF
  exit 0
fi
echo "medvlp (cargo test --release -p medvlp-model --lib bf16_gemm_speed):"
cargo test --release -q -p medvlp-model --lib bf16_gemm_speed -- --ignored --nocapture --test-threads=1 2>/dev/null |
  grep -E "GFLOP/s" | grep -v rounded | sed 's/^test .* \.\.\. //; s/^/  /'
echo "PyTorch $("$PY" -c 'import torch; print(torch.__version__)'):"
{ echo "$TORCH_TIMING"; cat <<'EOF'; } | "$PY" -
# (m, n, k, layout) as in bf16_gemm_speed: rhs^T multiplies by a transposed [n, k] weight,
# lhs^T is the weight gradient g^T x.
shapes = [(2080, 1024, 256, "rhs^T"), (2080, 256, 1024, "rhs^T"), (256, 1024, 2080, "lhs^T"),
          (2080, 256, 256, "rhs^T"), (65, 65, 64, "rhs^T")]
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
