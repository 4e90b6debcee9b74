#!/bin/sh
# The GPU checks as one prepared run of at most 10 minutes, on a machine with an NVIDIA GPU, from
# the repository root after a CUDA build (./scripts/setup.sh, or a build folder made elsewhere and
# carried: ldmc, tests/test_cuda, tests/test_train_cuda and gpu-libs/ or gpu-libs.tar.gz from
# scripts/gpu_bundle.sh, see docs/gpu.md):
#   0. the environment (env.txt): nvidia-smi, the driver, `ldd` of every binary through its
#      RUNPATH alone (a library "not found" is said loudly, and LD_LIBRARY_PATH then gets the
#      cuDNN and NCCL of a PyTorch venv as a fallback), `ldmc info` (CUDA, cuBLAS, cuDNN, NCCL
#      versions as loaded and as built), PyTorch's versions;
#   1. test_cuda with CUDA_LAUNCH_BLOCKING=1 (a failing kernel is named at its launch): every op,
#      AdamW/EMA and the tiny models' steps against the CPU; its first three failing tests, if
#      any, again under compute-sanitizer's memcheck;
#   2. `ldmc bench train` on the SDXL base UNet, batch 8 at 1024x1024, without gradient
#      checkpointing as PyTorch's eager step (the memory plan: 31.2 GiB of activations, 72.4 GiB
#      in all: docs/benchmarks.md; with less than that free, with the projections recomputed,
#      53.7 GiB; with less than that, with checkpointing),
#      its time per op kind (--profile) and cuDNN's plan for every convolution shape
#      (LDMC_CONV_LOG=1, in ldmc-bench.err), after a dry run that prints the memory plan;
#   3. bench/sdxl_train_torch.py: PyTorch's eager step of the same UNet on the same card (and
#      compiled with --compile-too, which does not fit the 10 minutes), with its top kernels;
#   4. what recomputing the projections costs: the same benchmark with --recompute-projections;
#   5. what updating during backward costs: the same benchmark with --fused-backward (62.9 GiB,
#      no gradient buffer, three launches a parameter in backward, no clipping);
#   6. test_train_cuda with CUDA_LAUNCH_BLOCKING=1: GPU and CPU runs resume each other's
#      checkpoints (its CPU runs make it the slowest: last, where the budget may cut it).
# Every step runs under `timeout`, within a budget for the whole run (default 540 s, leaving a
# cold start's extra time within 10 minutes); summary.txt has each step's exit status and time.
# Everything goes to OUT: $OUT when set (the device runner's folder), else the argument, else
# gpu-results/.
#
# Usage: scripts/gpu_check.sh [OUT] [--quick] [--compile-too] [--budget SECONDS]
#   --quick: the tests and a batch-2 benchmark only
# Environment: BUILD (default build), PYTHON (default /opt/torch/.venv/bin/python when present,
# else python3), OUT.
set -u
start=$(date +%s)
exec 3>&1 # the console, for the steps' status lines
out=${OUT:-}
arg_out=gpu-results
quick=0
compile=0
budget=540
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) quick=1 ;;
    --compile-too) compile=1 ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    -*) echo "usage: scripts/gpu_check.sh [OUT] [--quick] [--compile-too] [--budget S]" >&2
        exit 2 ;;
    *) arg_out=$1 ;;
    esac
    shift
done
[ -n "$out" ] || out=$arg_out
build=${BUILD:-build}
venv=/opt/torch/.venv
if [ -n "${PYTHON:-}" ]; then python=$PYTHON
elif [ -x "$venv/bin/python" ]; then python=$venv/bin/python
else python=python3; fi
root=$(pwd)
case "$build" in /*) build_abs=$build ;; *) build_abs=$root/$build ;; esac
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
# a build copied from another checkout finds this one's configs, data and CLI
export LDMC_CONFIG_DIR="$root/configs" LDMC_TEST_DATA="$root/tests/ref/data" \
    LDMC_CLI="$build_abs/ldmc"

status=0
# step NAME SECONDS command...: runs it under timeout, capped by what is left of the budget
# (keeping 5 s to finish); records its exit status and time; 124 is a timeout.
step() {
    name=$1 limit=$2
    shift 2
    left=$((start + budget - $(date +%s) - 5))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 5 ]; then
        echo "$name: skipped, the budget of ${budget}s is spent" | tee -a "$summary" >&3
        status=1
        return 1
    fi
    t0=$(date +%s)
    timeout -k 5 "$limit" "$@"
    rc=$?
    t=$(($(date +%s) - t0))
    note=""
    [ $rc -eq 124 ] && note=" (timed out after ${limit}s)"
    [ $rc -eq 77 ] && note=" (77: skipped, no CUDA device visible)"
    echo "$name: exit $rc in ${t}s$note" | tee -a "$summary" >&3
    [ $rc -eq 0 ] || status=1
    return $rc
}

# ---- 0. the environment -------------------------------------------------------------------------
# a carried build brings its non-CUDA libraries packed (scripts/gpu_bundle.sh)
if [ ! -d "$build/gpu-libs" ] && [ -f "$build/gpu-libs.tar.gz" ]; then
    tar -C "$build" -xzf "$build/gpu-libs.tar.gz" && echo "unpacked $build/gpu-libs.tar.gz"
fi
env_file="$out/env.txt"
{
    echo "== date, host"; date -u; uname -a
    echo "== nvidia-smi"; timeout 20 nvidia-smi 2>&1
    echo "== driver"
    timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm \
        --format=csv 2>&1
    cat /proc/driver/nvidia/version 2>&1
    echo "== CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-(unset)}" \
        "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-(unset)}"
} > "$env_file" 2>&1
missing=0
for b in ldmc tests/test_cuda tests/test_train_cuda; do
    {
        echo "== ldd $build/$b (RUNPATH: $(readelf -d "$build/$b" 2>/dev/null |
            sed -n 's/.*R\(UN\)\{0,1\}PATH.*\[\(.*\)\]/\2/p'))"
        env -u LD_LIBRARY_PATH ldd "$build/$b" 2>&1
    } >> "$env_file"
    if [ ! -x "$build/$b" ] ||
        env -u LD_LIBRARY_PATH ldd "$build/$b" 2>&1 | grep -q "not found"; then
        missing=1
        echo "!! $build/$b: MISSING or a library NOT FOUND through its RUNPATH:" |
            tee -a "$env_file"
        env -u LD_LIBRARY_PATH ldd "$build/$b" 2>&1 | grep "not found" | tee -a "$env_file"
    fi
done
if [ $missing -eq 1 ]; then
    status=1
    for d in "$venv"/lib/python3*/site-packages/nvidia/cudnn/lib \
        "$venv"/lib/python3*/site-packages/nvidia/nccl/lib; do
        [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    export LD_LIBRARY_PATH
    echo "!! falling back to LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" | tee -a "$env_file"
fi
{
    echo "== ldmc info"; timeout 30 "$build/ldmc" info 2>&1
    echo "== PyTorch ($python)"
    timeout 60 "$python" -c 'import torch; print("torch", torch.__version__, "CUDA",
torch.version.cuda, "cuDNN", torch.backends.cudnn.version(), "NCCL",
".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "-",
"device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' 2>&1
} >> "$env_file"
echo "== environment: $env_file"
grep -E "^(CUDA|cuBLAS|cuDNN|NCCL): |^  (device|no device)|^torch " "$env_file"
echo "env: $(($(date +%s) - start))s" >> "$summary"

# ---- 1. the kernels against the CPU -------------------------------------------------------------
echo "== test_cuda (CUDA_LAUNCH_BLOCKING=1)"
step test_cuda 150 env CUDA_LAUNCH_BLOCKING=1 "$build/tests/test_cuda" > "$out/test_cuda.log" 2>&1
tail -n 2 "$out/test_cuda.log"
# a failure: its failing tests again under compute-sanitizer's memcheck, which names the kernel and
# the address of a bad access (it sees cudaMalloc's blocks, not the arena's pieces inside them)
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
sed -n 's/^FAIL \(.*\)$/\1/p' "$out/test_cuda.log" | head -n 3 > "$out/test_cuda-failed.txt"
if [ -s "$out/test_cuda-failed.txt" ] && [ -x "$sanitizer" ]; then
    echo "== compute-sanitizer memcheck of the first failures (test_cuda-memcheck.log)"
    while IFS= read -r name; do
        step "memcheck $name" 60 "$sanitizer" --tool memcheck --print-limit 20 \
            "$build/tests/test_cuda" "$name" >> "$out/test_cuda-memcheck.log" 2>&1
    done < "$out/test_cuda-failed.txt"
fi

# ---- 2. ldmc's SDXL step ------------------------------------------------------------------------
batch=8
[ $quick -eq 1 ] && batch=2
echo "== ldmc bench train (batch $batch, 1024x1024)"
step ldmc-plan 40 "$build/ldmc" bench train --config sdxl_base --batch $batch --res 1024 \
    --dry-run --device cuda > "$out/ldmc-plan.txt" 2>&1
ckpt=""
# what the plan needs free (MiB): its total with the 3.0 GiB workspace (72.4 GiB plain, 53.7 with
# the projections recomputed: docs/benchmarks.md), ~600 MiB of CUDA context and library handles,
# and the headroom a run leaves free (1 GiB or 2% of the card, the more: src/core/device.h)
if command -v nvidia-smi >/dev/null; then
    free_mib=$(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits | head -n 1)
    total_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -n 1)
    headroom_mib=$((${total_mib:-0} / 50))
    [ "$headroom_mib" -lt 1024 ] && headroom_mib=1024
    if [ "${free_mib:-0}" -lt $((54990 + 600 + headroom_mib)) ]; then
        ckpt=--gradient-checkpointing
    elif [ "${free_mib:-0}" -lt $((74140 + 600 + headroom_mib)) ]; then
        ckpt=--recompute-projections
    fi
fi
[ -n "$ckpt" ] && echo "  (${free_mib:-?} MiB free, too little for the plain plan: with $ckpt)"
step ldmc-bench 180 env LDMC_CONV_LOG=1 "$build/ldmc" bench train --config sdxl_base \
    --batch $batch --res 1024 --device cuda $ckpt --profile --reps 5 \
    --warmup 2 --json > "$out/ldmc-bench.json" 2> "$out/ldmc-bench.err"
cat "$out/ldmc-bench.json"
grep -c "cuDNN algorithm" "$out/ldmc-bench.err" | sed 's/^/conv plans logged: /'

# ---- 3. PyTorch on the same card ----------------------------------------------------------------
echo "== PyTorch eager (same card, same run)"
step torch-eager 150 "$python" bench/sdxl_train_torch.py --device cuda --batch $batch --res 1024 \
    --steps 5 --warmup 2 --profile --json > "$out/torch-eager.json" 2> "$out/torch-eager.err"
cat "$out/torch-eager.json"
if [ $compile -eq 1 ]; then
    step torch-compile 400 "$python" bench/sdxl_train_torch.py --device cuda --batch $batch \
        --res 1024 --steps 5 --warmup 3 --compile --json > "$out/torch-compile.json" \
        2> "$out/torch-compile.err"
    cat "$out/torch-compile.json"
fi

# ---- 4. the projections made again in backward --------------------------------------------------
if [ -z "$ckpt" ]; then
    echo "== ldmc bench train --recompute-projections (what 53.7 GiB instead of 72.4 costs)"
    step ldmc-bench-projections 90 "$build/ldmc" bench train --config sdxl_base --batch $batch \
        --res 1024 --device cuda --recompute-projections --reps 3 --warmup 1 --json \
        > "$out/ldmc-bench-projections.json" 2> "$out/ldmc-bench-projections.err"
    cat "$out/ldmc-bench-projections.json"
fi

# ---- 5. AdamW during backward -------------------------------------------------------------------
if [ -z "$ckpt" ] || [ "$ckpt" = --recompute-projections ]; then
    echo "== ldmc bench train --fused-backward (62.9 GiB without recomputing; 44.1 with it)"
    step ldmc-bench-fused 90 "$build/ldmc" bench train --config sdxl_base --batch $batch \
        --res 1024 --device cuda --fused-backward $ckpt --reps 3 --warmup 1 --json \
        > "$out/ldmc-bench-fused.json" 2> "$out/ldmc-bench-fused.err"
    cat "$out/ldmc-bench-fused.json"
fi

# ---- 6. the GPU trainer (last: its CPU runs are the slowest) ------------------------------------
echo "== test_train_cuda (CUDA_LAUNCH_BLOCKING=1)"
step test_train_cuda 200 env CUDA_LAUNCH_BLOCKING=1 "$build/tests/test_train_cuda" \
    > "$out/test_train_cuda.log" 2>&1
tail -n 2 "$out/test_train_cuda.log"

echo "total: $(($(date +%s) - start))s, status $status" | tee -a "$summary"
exit $status
