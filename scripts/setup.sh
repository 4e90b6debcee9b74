#!/bin/sh
# Installs what ldmc needs to build and test, from Debian packages (Debian 12 "bookworm").
#   scripts/setup.sh              build and test dependencies
#   scripts/setup.sh --reference  also PyTorch, torchvision, numpy, scipy, PIL and regex (Debian's
#                                 python3-torch, python3-torchvision, python3-scipy, python3-pil,
#                                 python3-regex), for the benchmarks against PyTorch and for
#                                 regenerating tests/ref data
# Runs apt-get through sudo when not root. Does nothing when everything is already installed.
set -eu

packages="build-essential cmake pkg-config git
libopenblas-openmp-dev
libyaml-dev libcjson-dev libturbojpeg0-dev libpng-dev libhdf5-dev libstb-dev
libprotobuf-c-dev protobuf-c-compiler libisal-dev libutf8proc-dev zlib1g-dev libzip-dev
liblapacke-dev
libopenmpi-dev openmpi-bin
patchelf
python3 python3-numpy"
case "${1:-}" in
    --reference) packages="$packages python3 python3-numpy python3-torch python3-pil python3-regex
                 python3-torchvision python3-scipy" ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [--reference]" >&2; exit 2 ;;
esac

missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "setup: all packages present"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: not root and no sudo; install:$missing" >&2; exit 1; }
    sudo=sudo
fi
echo "setup: installing$missing"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
