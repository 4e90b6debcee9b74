#!/bin/sh
# The main job, until training lands: build ldmc, print what it is built from, and run the CPU
# op benchmark next to PyTorch (when Debian's python3-torch is installed; otherwise ldmc alone).
set -eu
cd "$(dirname "$0")/.."
scripts/build.sh
echo
build/ldmc info
echo
if /usr/bin/python3 -c "import torch" 2>/dev/null; then
    /usr/bin/python3 bench/ops_vs_torch.py --ldmc build/ldmc
else
    echo "(PyTorch not installed: run scripts/setup.sh --reference for the comparison)"
    build/ldmc bench ops
fi
