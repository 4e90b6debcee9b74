#!/bin/sh
# The seams of docs/architecture.md, checked by grep (ctest runs it with the CPU tests):
#   - device knowledge stays behind the ops: only src/ops/ and src/core/device.c name the CUDA
#     kernels' interface (ldmc_cuda_*, kernels/ldmc_cuda.h);
#   - the layers only look down: core includes core; ops core; nn core, ops, io; io core; data
#     core, io; diffusion core; pipeline everything but train, eval and cli; train everything
#     but eval and cli; eval everything but cli;
#   - one diffusion loss step (src/pipeline/loss.c) and one noising (the op, with one CPU kernel
#     and its CUDA twin; the GPU emulation calls the CPU kernel);
#   - src/train/trainer.c stays a loop: under 500 lines.
# Usage: tests/check_layers.sh [repository root]
set -u
root=${1:-$(dirname "$0")/..}
cd "$root" || exit 2
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# Lines of src/ that match a pattern, outside the given paths (grep -E patterns of file names).
outside() { # outside PATTERN ALLOWED_FILES_REGEX
    grep -rnE "$1" src --include='*.c' --include='*.h' --include='*.inc' | grep -vE "^($2):" || true
}

found=$(outside 'ldmc_cuda_|kernels/ldmc_cuda\.h' 'src/ops/[a-z_]+\.(c|h)|src/core/device\.c')
[ -z "$found" ] || fail "the CUDA kernels' interface outside src/ops and src/core/device.c:
$found"

# layer -> the layers its files may include
allowed() {
    case $1 in
    core) echo "core kernels" ;; # kernels/: core/device.c only (checked above)
    ops) echo "core ops kernels" ;;
    io) echo "core io" ;;
    text) echo "core io text" ;;
    nn) echo "core ops io nn" ;;
    diffusion) echo "core diffusion" ;;
    data) echo "core io data" ;;
    pipeline) echo "core ops io nn text diffusion pipeline" ;;
    train) echo "core ops io nn text diffusion data pipeline train" ;;
    eval) echo "core ops io nn text diffusion data pipeline train eval" ;;
    cli) echo "core ops io nn text diffusion data pipeline train eval cli" ;;
    esac
}
for dir in src/*/; do
    layer=$(basename "$dir")
    ok=$(allowed "$layer")
    [ -n "$ok" ] || { fail "src/$layer: a layer docs/architecture.md does not place"; continue; }
    for inc in $(grep -rhoE '#include "[a-z_]+/' "$dir" | sed 's/#include "//; s|/||' | sort -u); do
        case " $ok " in
        *" $inc "*) ;;
        *) fail "src/$layer includes src/$inc ($(grep -rlE "#include \"$inc/" "$dir" | tr '\n' ' '))" ;;
        esac
    done
done

found=$(outside 'ldmc_unet_forward\(|ldmc_mse_loss_weighted\(|ldmc_diffusion_noise\(' \
    'src/nn/unet\.[ch]|src/ops/ops\.h|src/ops/ops_(misc|diffusion)\.c|src/pipeline/(loss|sampler)\.c')
[ -z "$found" ] || fail "a diffusion step outside src/pipeline:
$found"
n=$(grep -rlE 'FN\(diffusion_noise_forward\)\(REAL' src | wc -l)
[ "$n" -eq 2 ] || fail "the noising CPU kernel: $n files declare or define it (decl.inc, diffusion.inc)"
n=$(grep -lE '__global__ static void noise_kernel' kernels/*.cu | wc -l)
[ "$n" -eq 1 ] || fail "the noising CUDA kernel: defined in $n files"
grep -q 'diffusion_noise_forward_f32(' kernels/emulation/ops.c ||
    fail "kernels/emulation: the GPU emulation's noising does not call the CPU kernel"

lines=$(wc -l < src/train/trainer.c)
[ "$lines" -lt 500 ] || fail "src/train/trainer.c has $lines lines (at most 499: split it)"

if [ "$failures" -ne 0 ]; then
    echo "$failures layering check(s) failed" >&2
    exit 1
fi
echo "layers: all checks passed"
