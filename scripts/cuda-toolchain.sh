#!/usr/bin/env bash
# Installs the CUDA 13.0 build toolchain from NVIDIA's PyPI wheels into a folder outside the
# repository and prints the environment that `cargo build --features cuda` needs:
#
#     eval "$(scripts/cuda-toolchain.sh)"
#     cargo build --release --features cuda
#
# No GPU, driver or system CUDA toolkit is needed to build. The folder is
# $MEDVLP_CUDA_HOME, default ~/.cache/medvlp/cuda-13.0; a second run reuses it (a stamp file
# records the wheel versions) and only prints the environment.
#
# Why these pieces:
#   * nvcc + crt + nvvm compile candle-kernels' PTX and its static kernels; cccl gives thrust.
#   * cudart, cublas(Lt), curand, nvrtc are linked dynamically by cudarc/candle (its
#     `dynamic-linking` feature); nccl is for the `nccl` feature.
#   * libcuda.so is NOT installed: only a driver provides it. medvlp never links it; the binary
#     opens libcuda.so.1 at run time (crates/medvlp-model/src/device/cuda_driver.rs), so a CUDA
#     build starts on machines without a driver and `--device cuda` says so in one sentence.
#   * CUDA 13.0 (not the newest 13.x): candle loads PTX through the driver's JIT, and the PTX
#     of an older nvcc is accepted by every 13.x driver (>= 580); newer PTX is not by older ones.
#     cudarc 0.19.10 (pinned through candle 0.11.1) knows CUDA <= 13.4 and NCCL <= 2.30.
#
# CUDA_COMPUTE_CAP (default 80) picks the architecture of the PTX; 80 runs on A100 and,
# through the JIT, on H100/H200 (set 90 for sm_90-only builds).
set -euo pipefail

prefix="${MEDVLP_CUDA_HOME:-${HOME}/.cache/medvlp/cuda-13.0}"
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
  nvidia-nccl-cu13==2.28.9
)
stamp="${prefix}/.medvlp-toolchain"
want="$(printf '%s\n' "${wheels[@]}")"

if [[ ! -f "${stamp}" || "$(cat "${stamp}")" != "${want}" ]]; then
  python="${PYTHON:-python3}"
  if ! "${python}" -m pip --version >/dev/null 2>&1; then
    echo "cuda-toolchain: needs ${python} with pip (set PYTHON=...)" >&2
    exit 1
  fi
  rm -rf "${prefix}"
  mkdir -p "${prefix}"
  echo "cuda-toolchain: installing ${#wheels[@]} wheels into ${prefix} (about 1.4 GB)" >&2
  # --target: no virtual environment and nothing in the user's site-packages.
  PIP_ROOT_USER_ACTION=ignore "${python}" -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "${prefix}/site" "${wheels[@]}" >&2
  cuda="${prefix}/site/nvidia/cu13"
  # nvcc.profile looks for headers and libraries under targets/<arch>/; the wheels put them
  # at the top of the folder.
  arch="$(uname -m)-linux"
  if [[ "${arch}" == aarch64-linux ]]; then arch=sbsa-linux; fi
  mkdir -p "${cuda}/targets/${arch}"
  ln -sfn ../../include "${cuda}/targets/${arch}/include"
  ln -sfn ../../lib "${cuda}/targets/${arch}/lib"
  # The linker wants unversioned names (-lcudart); the wheels ship only the versioned ones.
  for lib in cudart:13 cublas:13 cublasLt:13 curand:10 nvrtc:13; do
    ln -sfn "lib${lib%%:*}.so.${lib##*:}" "${cuda}/lib/lib${lib%%:*}.so"
  done
  ln -sfn ../../nccl/lib/libnccl.so.2 "${cuda}/lib/libnccl.so"
  ln -sfn ../../nccl/lib/libnccl.so.2 "${cuda}/lib/libnccl.so.2"
  for header in "${prefix}"/site/nvidia/nccl/include/*.h; do
    ln -sfn "${header}" "${cuda}/include/$(basename "${header}")"
  done
  "${cuda}/bin/nvcc" --version >/dev/null
  printf '%s\n' "${want}" >"${stamp}"
  echo "cuda-toolchain: ready" >&2
fi

cuda="${prefix}/site/nvidia/cu13"
cat <<EOF
export CUDA_HOME="${cuda}"
export PATH="${cuda}/bin:\${PATH}"
export LD_LIBRARY_PATH="${cuda}/lib\${LD_LIBRARY_PATH:+:\${LD_LIBRARY_PATH}}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
# candle-kernels compiles its .cu files in parallel only when told how many at once.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
EOF
