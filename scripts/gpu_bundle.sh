#!/bin/sh
# Makes a CUDA build folder self-contained for a GPU machine that lacks this machine's libraries:
# copies the shared libraries that ldmc and the GPU test programs load, other than glibc's, the
# GCC runtime's (libstdc++, libgcc_s), the CUDA ones (the driver, cuBLAS, cuDNN, NCCL, which the
# GPU machine has and the binaries' RUNPATH finds) and those every Debian or Ubuntu system has
# (apt's and Python's own: zlib, bzip2, xz, zstd, OpenSSL, GnuTLS and what it needs, libffi,
# libudev), into BUILD/gpu-libs under their sonames.
# The binaries look there first: their RUNPATH starts with $ORIGIN/gpu-libs (ldmc) and
# $ORIGIN/../gpu-libs (tests/), see CMakeLists.txt; a RUNPATH serves only the binary's own
# dependencies, so each copy gets RUNPATH $ORIGIN (patchelf) for theirs (OpenBLAS's libgfortran,
# HDF5's libsz and libcurl, ...). The folder is also packed as
# BUILD/gpu-libs.tar.gz (a third of its size; scripts/gpu_check.sh unpacks it where gpu-libs/ is
# missing). Prints the sizes of the folder and of the carry (the binaries and the archive) and
# fails when the carry is over the limit (64 MiB, what the device runner carries in all) or a
# library is not found here.
#
# Usage: scripts/gpu_bundle.sh [BUILD] [--limit-mib N] [--strip] [--all]
#   BUILD        the CUDA build folder (default build)
#   --strip      strip the binaries' symbol tables in place (strip --strip-unneeded), which the
#                carry's size may need; the GPU code and everything that runs stay
#   --all        bundle the base system's libraries too (for a machine that is not Debian-like)
# Environment: BUNDLE_BINARIES, the binaries under BUILD to bundle for (default: ldmc
#   tests/test_cuda tests/test_train_cuda, what scripts/gpu_check.sh runs).
set -eu
build=build
limit_mib=64
strip_binaries=0
all=0
while [ $# -gt 0 ]; do
    case "$1" in
    --limit-mib) limit_mib=${2:?--limit-mib needs a number}; shift ;;
    --strip) strip_binaries=1 ;;
    --all) all=1 ;;
    -*) echo "usage: scripts/gpu_bundle.sh [BUILD] [--limit-mib N] [--strip] [--all]" >&2
        exit 2 ;;
    *) build=$1 ;;
    esac
    shift
done
binaries=${BUNDLE_BINARIES:-ldmc tests/test_cuda tests/test_train_cuda}
if ! command -v patchelf >/dev/null; then
    echo "gpu_bundle: needs patchelf (apt-get install patchelf; scripts/setup.sh does)" >&2
    exit 1
fi
for b in $binaries; do
    [ -x "$build/$b" ] || { echo "gpu_bundle: $build/$b is missing (a CUDA build?)" >&2; exit 1; }
done
if [ $strip_binaries -eq 1 ]; then
    for b in $binaries; do strip --strip-unneeded "$build/$b"; done
fi

# Sonames that stay the GPU machine's own: glibc, the GCC runtime, the NVIDIA driver and CUDA
# libraries (the toolkit's and the pip wheels': cuBLAS, cuDNN, NCCL, nvrtc, ...).
system_lib() {
    case "$1" in
    linux-vdso.so.* | ld-linux*.so.* | libc.so.* | libm.so.* | libmvec.so.* | libdl.so.* | \
        libpthread.so.* | librt.so.* | libresolv.so.* | libutil.so.* | libanl.so.* | \
        libnss_*.so.* | libBrokenLocale.so.* | libstdc++.so.* | libgcc_s.so.*) return 0 ;;
    libcuda.so.* | libnvidia-*.so.* | libcudart.so.* | libcublas*.so.* | libcudnn*.so.* | \
        libnccl.so.* | libnvrtc*.so.* | libnvJitLink.so.* | libcufft*.so.* | libcurand.so.* | \
        libcusolver*.so.* | libcusparse*.so.* | libcupti.so.*) return 0 ;;
    esac
    [ $all -eq 1 ] && return 1
    case "$1" in
    libz.so.* | libbz2.so.* | liblzma.so.* | libzstd.so.* | liblz4.so.* | libcrypto.so.* | \
        libssl.so.* | libgnutls.so.* | libp11-kit.so.* | libtasn1.so.* | libidn2.so.* | \
        libunistring.so.* | libnettle.so.* | libhogweed.so.* | libgmp.so.* | libffi.so.* | \
        libudev.so.* | libsystemd.so.* | libgcrypt.so.* | libgpg-error.so.* | libcap.so.* | \
        libselinux.so.* | libpcre2-8.so.*) return 0 ;;
    esac
    return 1
}

dest="$build/gpu-libs"
rm -rf "$dest"
mkdir -p "$dest"
missing=0
# ldd lists every library loaded, direct or not: "soname => path (address)"
for b in $binaries; do ldd "$build/$b"; done | sort -u | while read -r name arrow path rest; do
    [ "$arrow" = "=>" ] || continue
    system_lib "$name" && continue
    if [ "$path" = "not" ]; then
        echo "gpu_bundle: $name NOT FOUND here (needed by the binaries)" >&2
        echo missing >> "$dest/.missing"
        continue
    fi
    if [ ! -e "$dest/$name" ]; then
        cp -L "$path" "$dest/$name"
        chmod u+w "$dest/$name"
        patchelf --set-rpath '$ORIGIN' "$dest/$name"
    fi
done
if [ -e "$dest/.missing" ]; then
    rm -f "$dest/.missing"
    missing=1
fi

echo "gpu-libs ($dest): the libraries the GPU machine may lack"
(cd "$dest" && ls -S | while read -r f; do
    printf "  %8.2f MiB  %s\n" "$(stat -c %s "$f" | awk '{print $1 / 1048576}')" "$f"
done)
if ls "$dest" | grep -q '^libmpi'; then
    echo "  note: MPI's libraries travel, its plugins (mca_*.so) do not: one process runs without"
    echo "  them (MPI starts only under a launcher); mpirun there needs that machine's Open MPI"
fi
tar -C "$build" -czf "$build/gpu-libs.tar.gz" gpu-libs
bundle=$(du -sb "$dest" | cut -f1)
archive=$(stat -c %s "$build/gpu-libs.tar.gz")
carry=$archive
for b in $binaries; do carry=$((carry + $(stat -c %s "$build/$b"))); done
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "gpu-libs: $(mib "$bundle"), gpu-libs.tar.gz: $(mib "$archive")"
echo "the carry ($binaries gpu-libs.tar.gz): $(mib "$carry")"
status=0
if [ "$carry" -gt $((limit_mib * 1048576)) ]; then
    echo "gpu_bundle: the carry is over $limit_mib MiB: try --strip or fewer binaries" \
        "(BUNDLE_BINARIES)" >&2
    status=1
fi
[ $missing -eq 0 ] || status=1
exit $status
