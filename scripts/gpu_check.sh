#!/bin/sh
# The GPU checks in one command, on a machine with an NVIDIA GPU, from the repository root after a
# CUDA build (./scripts/setup.sh, or a build/ folder copied from a machine with nvcc):
#   1. the CUDA tests (test_cuda: every op, AdamW/EMA and the tiny models' steps against the CPU;
#      test_train_cuda: GPU and CPU runs resume each other's checkpoints);
#   2. `ldmc bench train` on the SDXL base UNet, batch 8 at 1024x1024, with gradient
#      checkpointing (without it the step's activations need ~158 GiB: see docs/benchmarks.md),
#      its time per op kind, and a dry run that prints the memory plan;
#   3. bench/sdxl_train_torch.py: PyTorch's step of the same UNet on the same card, eager (and
#      compiled with --compile-too), with its top kernels.
# Everything goes to OUT (default gpu-results/): the logs and one JSON per benchmark.
#
# Usage: scripts/gpu_check.sh [OUT] [--quick] [--compile-too]
#   --quick: the tests and a batch-2 benchmark only (a few minutes on an H100)
# Environment: BUILD (default build), PYTHON (default python3), and LD_LIBRARY_PATH is extended
# with the cuDNN and NCCL of a PyTorch venv at /opt/torch/.venv when present.
set -u
out=gpu-results
quick=0
compile=0
for a in "$@"; do
    case "$a" in
    --quick) quick=1 ;;
    --compile-too) compile=1 ;;
    -*) echo "usage: scripts/gpu_check.sh [OUT] [--quick] [--compile-too]" >&2; exit 2 ;;
    *) out=$a ;;
    esac
done
build=${BUILD:-build}
python=${PYTHON:-python3}
root=$(pwd)
mkdir -p "$out"
venv=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
for d in "$venv/cudnn/lib" "$venv/nccl/lib" "$root/$build/gpu-libs"; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
# a build copied from another checkout finds this one's configs, data and CLI
export LDMC_CONFIG_DIR="$root/configs" LDMC_TEST_DATA="$root/tests/ref/data" LDMC_CLI="$root/$build/ldmc"

status=0
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
"$build/ldmc" info > "$out/ldmc-info.txt" 2>&1

echo "== CUDA tests"
for t in test_cuda test_train_cuda; do
    "$build/tests/$t" > "$out/$t.log" 2>&1
    rc=$?
    echo "$t: exit $rc ($(tail -n 1 "$out/$t.log"))"
    [ $rc -eq 77 ] && echo "  (77: no CUDA device visible; the checks below will fail too)"
    [ $rc -ne 0 ] && status=1
done

batch=8
[ $quick -eq 1 ] && batch=2
echo "== ldmc bench train (batch $batch, 1024x1024)"
"$build/ldmc" bench train --config sdxl_base --batch $batch --res 1024 --dry-run --device cuda \
    > "$out/ldmc-plan.txt" 2>&1
"$build/ldmc" bench train --config sdxl_base --batch $batch --res 1024 --device cuda \
    --gradient-checkpointing --profile \
    --reps 5 --warmup 2 --json > "$out/ldmc-bench.json" 2> "$out/ldmc-bench.err" || status=1
cat "$out/ldmc-bench.json"

echo "== PyTorch (same card, same run)"
"$python" bench/sdxl_train_torch.py --batch $batch --res 1024 --steps 5 --warmup 2 --profile --json \
    > "$out/torch-eager.json" 2> "$out/torch-eager.err" || status=1
cat "$out/torch-eager.json"
if [ $compile -eq 1 ]; then
    "$python" bench/sdxl_train_torch.py --batch $batch --res 1024 --steps 5 --warmup 3 --compile \
        --json > "$out/torch-compile.json" 2> "$out/torch-compile.err" || status=1
    cat "$out/torch-compile.json"
fi
exit $status
