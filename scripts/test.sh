#!/bin/sh
# Builds ldmc and runs the CPU test suite (`ctest -L cpu`). Extra arguments go to cmake.
set -eu
cd "$(dirname "$0")/.."
scripts/build.sh "$@"
ctest --test-dir "${BUILD_DIR:-build}" -L cpu --output-on-failure
