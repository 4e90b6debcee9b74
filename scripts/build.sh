#!/bin/sh
# Configures and builds ldmc (library, `ldmc`, tests, and the CUDA kernels when nvcc exists).
#   scripts/build.sh [extra cmake options]     e.g. -DLDMC_SANITIZE=ON
# BUILD_DIR (default: build) selects the build folder.
set -eu
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
cuda=""
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    cuda="-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc"
fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release $cuda "$@"
cmake --build "$build" -j "$(nproc)"
