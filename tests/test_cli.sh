#!/bin/sh
# The `ldmc` command line: usage and exit codes, `ldmc info` (build; model configs, their exact
# parameter counts and memory plans), `ldmc init` and `ldmc convert` errors, `ldmc sample`, `ldmc
# eval` usage and errors, quick `ldmc bench ops`, `bench inception` and `bench sample` runs.
# With a second CLI built against the CPU emulation of the CUDA kernels, `bench train` and
# `bench step` on the GPU code path too.
# Usage: tests/test_cli.sh path/to/ldmc [path/to/ldmc_cli_emulated]
set -u
ldmc=${1:?usage: test_cli.sh path/to/ldmc [path/to/ldmc_cli_emulated]}
emulated=${2:-}
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

expect_status() {  # expect_status STATUS command...
    want=$1; shift
    "$@" >/tmp/ldmc_cli_out.$$ 2>&1
    got=$?
    [ "$got" -eq "$want" ] || fail "'$*' exited $got, want $want: $(head -3 /tmp/ldmc_cli_out.$$)"
}

json_number() {  # json_number KEY: the number of "KEY" in the last command's JSON output
    sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" /tmp/ldmc_cli_out.$$
}

sdxl_plan() {  # sdxl_plan [OPTION...]: the SDXL base step, batch 8 at 1024², planned (JSON)
    expect_status 0 "$ldmc" bench train --config "$configs/sdxl_base.yaml" --batch 8 --res 1024 \
        --device cuda --dry-run --json "$@"
}

expect_status 2 "$ldmc"
grep -q "usage: ldmc" /tmp/ldmc_cli_out.$$ || fail "no usage without arguments"
expect_status 0 "$ldmc" --help
expect_status 2 "$ldmc" frobnicate
grep -q "unknown command 'frobnicate'" /tmp/ldmc_cli_out.$$ || fail "unknown command not named"

expect_status 0 "$ldmc" info
for field in "build:" "threads:" "OpenBLAS:" "libraries:" "libjpeg-turbo" "HDF5" "libyaml" "cJSON"; do
    grep -q "$field" /tmp/ldmc_cli_out.$$ || fail "ldmc info lacks '$field'"
done
# the GPU side: the CUDA runtime and driver with the devices or why there is none (an old driver
# shows here), cuBLAS, cuDNN and NCCL as loaded and as built against; a CPU build says it has none
grep -q "^CUDA: " /tmp/ldmc_cli_out.$$ || fail "ldmc info lacks the CUDA line"
if grep -q "^build:       CUDA on" /tmp/ldmc_cli_out.$$; then
    for field in "^CUDA: .*runtime [0-9.]*.*driver" "^cuBLAS: .*(built with " "^cuDNN: " \
        "^NCCL: "; do
        grep -q "$field" /tmp/ldmc_cli_out.$$ || fail "ldmc info (CUDA build) lacks '$field'"
    done
    grep -qE "^  device 0: |^  no device: [^ ]" /tmp/ldmc_cli_out.$$ ||
        fail "ldmc info names neither a device nor why there is none"
else
    grep -q "^CUDA:  *not in this build" /tmp/ldmc_cli_out.$$ ||
        fail "a CPU build's ldmc info does not say it has no CUDA"
fi
LDMC_THREADS=1 "$ldmc" info | grep -q "threads:     1 " || fail "LDMC_THREADS=1 not honoured"
expect_status 2 "$ldmc" info --bogus

# Model configs: module summaries and the exact parameter counts, without allocating weights.
configs=$(dirname "$0")/../configs
for pair in sdxl_base:2,567,463,684 sdxl_refiner:2,259,526,660 sdxl_vae:83,653,863; do
    expect_status 0 "$ldmc" info "$configs/${pair%%:*}.yaml"
    grep -q "^parameters: ${pair#*:}$" /tmp/ldmc_cli_out.$$ || fail "${pair%%:*}: not ${pair#*:} parameters"
done
"$ldmc" info "$configs/sdxl_refiner.yaml" | grep -q "middle_block .*SpatialTransformer 1536 (24 heads, depth 4)" ||
    fail "the refiner's middle transformer is missing from the summary"
expect_status 0 "$ldmc" info "$configs/sdxl_base.yaml" --batch 8 --res 1024 1024
grep -q "batch 8 at 1024x1024 (width x height; latent 128x128)" /tmp/ldmc_cli_out.$$ || fail "no memory plan"
# the latent of the config's own autoencoder (f = 4 in the demo's models), not always SDXL's f = 8
expect_status 0 "$ldmc" info "$configs/demo_model.yaml" --batch 2 --res 64 32
grep -q "batch 2 at 32x64 (width x height; latent 8x16)" /tmp/ldmc_cli_out.$$ ||
    fail "the UNet's memory plan of demo_model.yaml is not at the f = 4 latent: $(grep 'memory plan' /tmp/ldmc_cli_out.$$ | head -1)"
grep -q "activations with gradient checkpointing" /tmp/ldmc_cli_out.$$ || fail "no plan with gradient checkpointing"
grep -q "activations with the projections recomputed" /tmp/ldmc_cli_out.$$ ||
    fail "no plan with the projections recomputed"
expect_status 2 "$ldmc" info "$configs/sdxl_base.yaml" --batch 8 --res 1000 1000
expect_status 1 "$ldmc" info /nonexistent.yaml
grep -q "/nonexistent.yaml: cannot open" /tmp/ldmc_cli_out.$$ || fail "a missing config is not named"

# init and convert: usage errors are exit code 2, bad files exit code 1 with the file named.
expect_status 2 "$ldmc" init
expect_status 2 "$ldmc" convert only-one-argument
expect_status 2 "$ldmc" convert a b --config "$configs/tiny_vae.yaml" --dtype f8
expect_status 1 "$ldmc" convert /nonexistent.safetensors /tmp/x.safetensors --config "$configs/tiny_vae.yaml"
grep -q "/nonexistent.safetensors: cannot open" /tmp/ldmc_cli_out.$$ || fail "a missing weights file is not named"

# A stand-alone VAE file with bare keys (encoder.*, as sdxl_vae.safetensors has them) converts to
# an official file with first_stage_model.* keys only (no bare copies passed through).
work=$(mktemp -d)
expect_status 0 "$ldmc" init "$configs/tiny_vae.yaml" "$work/vae.safetensors"
python3 - "$work/vae.safetensors" "$work/bare.safetensors" <<'PY' || fail "cannot write a bare VAE file"
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
bare = {k[len("first_stage_model."):] if k.startswith("first_stage_model.") else k: v
        for k, v in header.items()}
blob = json.dumps(bare).encode()
blob += b" " * (-len(blob) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(blob)) + blob + data[8 + n:])
PY
expect_status 0 "$ldmc" convert "$work/bare.safetensors" "$work/back.safetensors" \
    --config "$configs/tiny_vae.yaml" --to official
python3 - "$work/back.safetensors" <<'PY' || fail "converting a bare VAE file: keys other than first_stage_model.*"
import json, struct, sys
data = open(sys.argv[1], "rb").read()
keys = [k for k in json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]]) if k != "__metadata__"]
sys.exit(0 if keys and all(k.startswith("first_stage_model.") for k in keys) else 1)
PY
cmp -s "$work/vae.safetensors" "$work/back.safetensors" || fail "bare -> official is not the original file"

# a legacy Stable Diffusion-style .ckpt (PyTorch pickle; its state_dict holds official keys)
# converts like any weights file
data=$(dirname "$0")/ref/data
expect_status 0 "$ldmc" convert "$data/torch/tiny_vae.ckpt" "$work/from_ckpt.safetensors" --config "$configs/tiny_vae.yaml"
[ -s "$work/from_ckpt.safetensors" ] || fail "convert of a .ckpt wrote nothing"

# A whole SDXL-shaped file without downloads: UNet, VAE and both text encoders in one official
# file (ldmc init --vae), which the trainer, `ldmc convert` and other tools read.
expect_status 0 "$ldmc" init "$configs/tiny_unet_text.yaml" "$work/whole.safetensors" \
    --vae "$configs/tiny_vae.yaml"
python3 - "$work/whole.safetensors" <<'PY' || fail "ldmc init --vae: not UNet + VAE + both encoders"
import json, struct, sys
data = open(sys.argv[1], "rb").read()
keys = [k for k in json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]]) if k != "__metadata__"]
prefixes = ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.transformer.",
            "conditioner.embedders.1.model.")
counts = [sum(k.startswith(p) for k in keys) for p in prefixes]
sys.exit(0 if all(counts) and sum(counts) == len(keys) else 1)
PY
# a UNet alone (what a fine-tuning run writes) converts with its config's text encoders left out
python3 - "$work/whole.safetensors" "$work/unet_only.safetensors" <<'PY' || fail "cannot write a UNet-only file"
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
keep = {k: v for k, v in header.items() if k.startswith("model.diffusion_model.")}
blobs, offset = [], 0
for k, v in keep.items():
    a, b = v["data_offsets"]
    blobs.append(data[8 + n + a:8 + n + b])
    v["data_offsets"] = [offset, offset + b - a]
    offset += b - a
blob = json.dumps(keep).encode()
blob += b" " * (-len(blob) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(blob)) + blob + b"".join(blobs))
PY
expect_status 0 "$ldmc" convert "$work/unet_only.safetensors" "$work/unet_only.diffusers" \
    --config "$configs/tiny_unet_text.yaml"
grep -q "has no text encoder 1 (open_clip): left out" /tmp/ldmc_cli_out.$$ || fail "convert: the absent encoders are not named"
[ -f "$work/unet_only.diffusers/unet/diffusion_pytorch_model.safetensors" ] && \
    [ ! -d "$work/unet_only.diffusers/text_encoder" ] || fail "convert of a UNet alone"
expect_status 1 "$ldmc" init "$configs/tiny_unet_text.yaml" "$work/x.safetensors" --vae "$configs/tiny_unet_class.yaml"
grep -q "without a vae: section" /tmp/ldmc_cli_out.$$ || fail "init --vae of a config without a vae"
# the text encoders' forward, timed (bench/text_vs_torch.py reads the JSON)
expect_status 0 "$ldmc" bench text --config "$configs/tiny_unet_text.yaml" --batch 2 --reps 1 --json
lines=$(grep -c '"layout": "\(hf\|open_clip\)".*"ms_forward": [0-9.]*}' /tmp/ldmc_cli_out.$$)
[ "$lines" -eq 2 ] || fail "bench text --json printed $lines encoder lines, want 2"
# ldmc sample: a class model from a model config and weights; the parameters in each PNG's text
# chunk; a text model's prompts from a file (the tiny vocabulary); the job's errors
expect_status 0 "$ldmc" init "$configs/tiny_unet_class.yaml" "$work/class.safetensors" --vae "$configs/tiny_vae.yaml"
expect_status 0 "$ldmc" sample "$configs/tiny_unet_class.yaml" --weights "$work/class.safetensors" \
    --vae "$configs/tiny_vae.yaml" --class 0,3 --n 2 --batch 3 --seed 11 --steps 3 --cfg 2 \
    --sampler dpmpp_2m --size 16x8 --out "$work/samples"
grep -q "wrote 4 images to $work/samples (and grid.png)" /tmp/ldmc_cli_out.$$ || fail "sample: $(tail -1 /tmp/ldmc_cli_out.$$)"
grep -q "images 4-4 of 4 | step 3/3" /tmp/ldmc_cli_out.$$ || fail "sample: no progress line per batch"
[ -f "$work/samples/grid.png" ] && [ -f "$work/samples/00003-14.png" ] || fail "sample: files $(ls "$work/samples")"
grep -aq "^Steps: 3, Sampler: dpmpp_2m, Schedule: karras, CFG scale: 2, Seed: 14, Size: 16x8" \
    "$work/samples/00003-14.png" && grep -aq "parameters.class 3$" "$work/samples/00003-14.png" ||
    fail "sample: the PNG's parameters text"
data=$(dirname "$0")/ref/data
printf 'a red circle\n\n  two squares \n' >"$work/prompts.txt"
expect_status 0 "$ldmc" sample "$configs/tiny_unet_text.yaml" --weights "$work/whole.safetensors" \
    --vae "$configs/tiny_vae.yaml" --vocab "$data/tiny_bpe" --prompts "$work/prompts.txt" --seed 5 --steps 2 --size 16x16 \
    --sampler euler_a --schedule karras --negative "blurry, low quality" --no-grid --quiet --out "$work/text"
[ "$(ls "$work/text" | wc -l)" -eq 2 ] || fail "sample --prompts: $(ls "$work/text")"
grep -aq "parameters.  two squares $" "$work/text/00001-6.png" &&
    grep -aq "^Negative prompt: blurry, low quality$" "$work/text/00001-6.png" &&
    grep -aq "^Steps: 2, Sampler: euler_a, Schedule: karras" "$work/text/00001-6.png" ||
    fail "sample --prompts: the second prompt's parameters"
if [ -n "$emulated" ]; then # the GPU path (bf16 activations, weights on the device)
    expect_status 0 "$emulated" sample "$configs/tiny_unet_class.yaml" --weights "$work/class.safetensors" \
        --vae "$configs/tiny_vae.yaml" --class 2 --n 2 --batch 2 --steps 2 --size 16x8 --sampler euler_a \
        --device cuda --out "$work/gpu"
    grep -q "wrote 2 images" /tmp/ldmc_cli_out.$$ || fail "sample --device cuda (emulated): $(tail -1 /tmp/ldmc_cli_out.$$)"
fi
expect_status 2 "$ldmc" sample "$configs/tiny_unet_class.yaml" --class 1
grep -q "no --out DIR" /tmp/ldmc_cli_out.$$ || fail "sample without --out"
expect_status 2 "$ldmc" sample "$configs/tiny_unet_class.yaml" --class x --out "$work/x"
expect_status 2 "$ldmc" sample "$configs/tiny_unet_class.yaml" --class 1 --shard 0/2 --out "$work/x"
grep -q "every shard needs the same --seed" /tmp/ldmc_cli_out.$$ || fail "sample --shard without --seed"
expect_status 2 "$ldmc" sample "$configs/tiny_unet_class.yaml" --class 1 --prompt hi --out "$work/x"
expect_status 1 "$ldmc" sample "$configs/tiny_unet_class.yaml" --class 1 --out "$work/x"
grep -q "samples from --weights FILE" /tmp/ldmc_cli_out.$$ || fail "sample: a model config without weights"
expect_status 1 "$ldmc" sample "$configs/tiny_unet_class.yaml" --weights "$work/class.safetensors" \
    --vae "$configs/tiny_vae.yaml" --class 1 --size 16x8 --sampler plms --out "$work/x"
grep -q "sampler plms: expected one of ddim, euler, euler_a, dpmpp_2m" /tmp/ldmc_cli_out.$$ || fail "sample: an unknown sampler"
expect_status 1 "$ldmc" sample "$configs/demo.yaml" --class 1 --out "$work/x"
grep -q "no weights at .*model.safetensors: the run has not finished" /tmp/ldmc_cli_out.$$ ||
    fail "sample: a training config whose run has not finished"
expect_status 1 "$ldmc" sample "$configs/tiny_unet_text.yaml" --weights "$work/whole.safetensors" \
    --vocab "$data/tiny_bpe" --prompts /nonexistent.txt --out "$work/x"
grep -q "/nonexistent.txt: cannot read" /tmp/ldmc_cli_out.$$ || fail "sample: a missing prompts file"
# ldmc eval: usage; the FID Inception's weights asked for; statistics files named when bad
expect_status 2 "$ldmc" eval
expect_status 0 "$ldmc" eval --help
grep -q "ldmc eval fid A B" /tmp/ldmc_cli_out.$$ || fail "eval --help"
expect_status 2 "$ldmc" eval nothing
expect_status 2 "$ldmc" eval fid only-one
expect_status 2 "$ldmc" eval is "$work" --mode tf2
expect_status 2 "$ldmc" eval is "$work"
grep -q "pt_inception-2015-12-05-6726825d.pth" /tmp/ldmc_cli_out.$$ || fail "eval: the Inception's weights are not named"
expect_status 1 "$ldmc" eval fid /nonexistent_a.npz /nonexistent_b.npz
grep -q "/nonexistent_a.npz: not a .npz" /tmp/ldmc_cli_out.$$ || fail "eval fid: a missing statistics file is not named"
expect_status 1 "$ldmc" eval is "$work" --inception "$work/class.safetensors"
grep -q "no tensor 'Conv2d_1a_3x3.conv.weight': not the FID Inception's weights" /tmp/ldmc_cli_out.$$ ||
    fail "eval: other weights as the Inception's"
rm -rf "$work"

expect_status 0 "$ldmc" bench ops --reps 1 --filter group_norm --json
lines=$(grep -c '"op": "group_norm".*"ms_forward_backward": [0-9.]*}' /tmp/ldmc_cli_out.$$)
[ "$lines" -eq 2 ] || fail "bench ops --json printed $lines group_norm lines, want 2"
expect_status 0 "$ldmc" bench inception --batch 1 --reps 1 --json
grep -q '"batch": 1, "size": 512, .*"images_per_s": [0-9.]*}' /tmp/ldmc_cli_out.$$ || fail "bench inception --json"
expect_status 0 "$ldmc" bench sample --config "$configs/tiny_unet_class.yaml" --res 32 --steps 2 --reps 1 --json
grep -q '"unet_batch": 2, "sampler": "euler", .*"ms_per_step": [0-9.]*}' /tmp/ldmc_cli_out.$$ || fail "bench sample --json"
expect_status 2 "$ldmc" bench sample --config "$configs/tiny_unet_class.yaml" --sampler plms
expect_status 2 "$ldmc" bench ops --reps 0
expect_status 2 "$ldmc" bench nothing

# bench train: a real step of a tiny UNet on the CPU, and the SDXL base step planned by a dry run
# on "the GPU" (bf16 activations): its FLOP count must be SDXL's, about 20.6 TFLOP an image
# (../shared/DESIGN.md), and gradient checkpointing must cut the activation memory.
expect_status 0 "$ldmc" bench train --config "$configs/tiny_unet_text.yaml" --batch 2 --res 64 \
    --device cpu --reps 1 --warmup 0 --profile --json
grep -q '"img_per_s": [0-9.]*, "tflops": [0-9.]*, "guided_forward_ms": [0-9.]*, "guided_forward_batch": 2, "top_ops": \[{"op": "' \
    /tmp/ldmc_cli_out.$$ || fail "bench train --json on a tiny UNet"
expect_status 0 "$ldmc" bench train --config "$configs/sdxl_base.yaml" --batch 8 --res 1024 \
    --device cuda --dry-run --json
per_image=$(sed -n 's/.*"tflop_per_image": \([0-9.]*\).*/\1/p' /tmp/ldmc_cli_out.$$)
plain=$(sed -n 's/.*"activations_gib": \([0-9.]*\).*/\1/p' /tmp/ldmc_cli_out.$$)
unplanned=$(sed -n 's/.*"activations_unplanned_gib": \([0-9.]*\).*/\1/p' /tmp/ldmc_cli_out.$$)
live=$(sed -n 's/.*"activations_live_gib": \([0-9.]*\).*/\1/p' /tmp/ldmc_cli_out.$$)
awk -v f="$per_image" 'BEGIN { exit !(f > 19.5 && f < 21.5) }' ||
    fail "SDXL base: $per_image TFLOP an image forward + backward, want about 20.6"
# the parameters on one GPU: bf16 weights (2 bytes), the f32 master's low halves (2: its high
# halves are the bf16 weights, src/core/params.h), f32 gradients, Adam m and v (12)
weights=$(json_number weights_gib)
awk -v w="$weights" 'BEGIN { p = 2.567463684e9 / 2^30; exit !(w > 15.99 * p && w < 16.05 * p) }' ||
    fail "SDXL base: $weights GiB of weights and optimizer state, 16 bytes a parameter expected"
# the memory plan: activations freed after their last use, gradients after their producer's
# backward, norms' and activations' outputs made again in backward (31.2 GiB planned on
# 2026-12-03; 111.6 without a plan, 146.1 before some gradients were bf16 and adds shared theirs
# between both inputs), placed within 2% of the most bytes live at once
awk -v p="$plain" -v u="$unplanned" -v l="$live" \
    'BEGIN { exit !(p > 0 && p < 34 && u > 100 && p <= 1.02 * l && l <= p) }' ||
    fail "SDXL base's memory plan: $plain GiB planned, $live live at once, $unplanned unplanned"
expect_status 0 "$ldmc" bench train --config "$configs/sdxl_base.yaml" --batch 8 --res 1024 \
    --device cuda --dry-run --gradient-checkpointing --json
ckpt=$(sed -n 's/.*"activations_gib": \([0-9.]*\).*/\1/p' /tmp/ldmc_cli_out.$$)
awk -v a="$ckpt" -v b="$plain" 'BEGIN { exit !(a > 0 && a < 0.6 * b) }' ||
    fail "gradient checkpointing: $ckpt GiB of activations against $plain without"
# the transformers' q, k, v and feed-forward input products made again in backward instead:
# the step within 64 GiB in all without checkpointing (53.7 GiB planned on 2026-12-03), for
# 12 more TFLOP of the 160 (2.8 an image)
sdxl_plan --recompute-projections
grep -q '"gradient_checkpointing": false, "recompute_projections": true' /tmp/ldmc_cli_out.$$ ||
    fail "bench train --recompute-projections: not in the JSON"
projections=$(json_number peak_gib)
remade=$(json_number tflop_per_image)
awk -v p="$projections" -v r="$remade" -v f="$per_image" \
    'BEGIN { exit !(p > 40 && p <= 64 && r - f > 2.5 && r - f < 3.1) }' ||
    fail "projections recomputed: $projections GiB in all, $remade TFLOP an image against $per_image"
# bf16 activation gradients (src/core/tape.h), where a product reads them rounded: in each of
# the 70 transformer blocks, the feed-forward's first product (8 d wide), self-attention's q, k,
# v and cross-attention's q (4 d), both attentions' outputs (2 d), over T tokens, and
# cross-attention's k and v over 77: 10 blocks of d = 640 at T = 4096, 60 of d = 1280 at
# T = 1024, 2 bytes a value, 8 images: 23693107200 bytes = 22.066 GiB
bf16_grads=$(json_number activation_gradients_bf16_gib)
awk -v g="$bf16_grads" 'BEGIN { exit !(g > 22.06 && g < 22.075) }' ||
    fail "bf16 activation gradients of the SDXL step: $bf16_grads GiB, 22.066 expected"
# every op of the SDXL step writes the activation gradients it is first to reach (or passes dy's
# buffer on): none is zeroed to be added into
[ "$(json_number activation_gradients_zeroed_bytes)" = 0 ] ||
    fail "SDXL step: $(json_number activation_gradients_zeroed_bytes) bytes of activation gradients zeroed first"
# a class-conditional UNet's GPU plan (its label table reserved on the host, as every dry run's)
expect_status 0 "$ldmc" bench train --config "$configs/tiny_unet_class.yaml" --batch 2 --res 64 \
    --device cuda --dry-run --json
[ "$(json_number activation_gradients_zeroed_bytes)" = 0 ] ||
    fail "class UNet step: activation gradients zeroed first"
# each parameter updated during backward (optim.fused_backward): no gradient buffer (12 bytes a
# parameter), the same activations and FLOPs: the step within 64 GiB without recomputing
# anything (62.9 GiB planned on 2026-12-03, the workspace included); and a real step of it on the CPU
sdxl_plan --fused-backward
grep -q '"recompute_projections": false, "fused_backward": true' /tmp/ldmc_cli_out.$$ ||
    fail "bench train --fused-backward: not in the JSON"
fused=$(json_number peak_gib)
fused_weights=$(json_number weights_gib)
fused_acts=$(json_number activations_gib)
fused_flops=$(json_number tflop_per_image)
fused_ws=$(json_number workspace_gib)
# (the total counts the workspace a GPU run reserves up front: 8 bytes for each of 2^28 values,
# 1 GiB for cuDNN and 1 MiB, ldmc_cuda_workspace_max)
awk -v p="$fused" -v w="$fused_weights" -v a="$fused_acts" -v b="$plain" -v f="$fused_flops" \
    -v g="$per_image" -v s="$fused_ws" 'BEGIN { q = 2.567463684e9 / 2^30; d = p - (w + a + s);
    exit !(p > 40 && p <= 64 && w > 11.99 * q && w < 12.05 * q && a < b + 0.1 && f == g &&
           s > 3.0 && s < 3.002 && d > -0.003 && d < 0.003) }' ||
    fail "fused backward: $fused GiB in all, $fused_weights of weights, $fused_acts of activations ($plain without), $fused_ws of workspace, $fused_flops TFLOP an image ($per_image)"
expect_status 0 "$ldmc" bench train --config "$configs/tiny_unet_text.yaml" --batch 2 --res 64 \
    --device cpu --reps 1 --warmup 1 --fused-backward --json
grep -q '"fused_backward": true.*"img_per_s": [0-9.]*' /tmp/ldmc_cli_out.$$ ||
    fail "bench train --fused-backward on a tiny UNet"
# one rank's plan of a data-parallel run: ZeRO-1 over 8 ranks leaves the bf16 weights (2 bytes a
# parameter) and f32 gradients (4) whole and shares the master's low halves, m, v and EMA (14):
# about 6 + 14/8 = 7.75 bytes a parameter against 20 for one rank with an EMA
for ranks in 1 8; do
    expect_status 0 "$ldmc" bench train --config "$configs/sdxl_base.yaml" --batch 8 --res 1024 \
        --device cuda --dry-run --ranks $ranks --zero --ema --json
    grep -q "\"ranks\": $ranks, \"zero\": true, \"ema\": true" /tmp/ldmc_cli_out.$$ ||
        fail "bench train --ranks $ranks: not in the JSON"
    eval "weights_$ranks=\$(sed -n 's/.*\"weights_gib\": \\([0-9.]*\\).*/\\1/p' /tmp/ldmc_cli_out.$$)"
done
awk -v a="$weights_1" -v b="$weights_8" 'BEGIN { p = 2.567463684e9 / 2^30;
    exit !(a > 19.9 * p && a < 20.1 * p && b > 7.7 * p && b < 8.0 * p) }' ||
    fail "ZeRO-1 plan: $weights_1 GiB a rank alone, $weights_8 GiB at 8 ranks"
expect_status 2 "$ldmc" bench train --config "$configs/sdxl_base.yaml" --ranks 8
if [ -n "$emulated" ]; then
    expect_status 0 "$emulated" bench train --config "$configs/tiny_unet_class.yaml" --batch 2 \
        --res 32 --device cuda --reps 1 --warmup 1 --profile --json
    grep -q '"device": "CPU emulation of the CUDA backend".*"top_ops": \[{"op": "' \
        /tmp/ldmc_cli_out.$$ || fail "bench train on the (emulated) GPU"
    expect_status 0 "$emulated" bench step "$configs/demo.yaml" --reps 1 --res 32 32 \
        --set train.device=cuda --set data.batch_size=2
fi
expect_status 2 "$ldmc" bench train --batch 8
expect_status 1 "$ldmc" bench train --config "$configs/sdxl_base.yaml" --res 1000 --dry-run
grep -q "multiples of 32" /tmp/ldmc_cli_out.$$ || fail "bench train: a bad size is not explained"

# train, cache, demo-data: usage errors exit 2; bad configs exit 1 with the file and key named.
expect_status 0 "$ldmc" train --help
grep -q "usage: ldmc train CONFIG" /tmp/ldmc_cli_out.$$ || fail "train --help"
expect_status 2 "$ldmc" train
expect_status 2 "$ldmc" cache "$configs/demo.yaml"
expect_status 2 "$ldmc" demo-data
expect_status 1 "$ldmc" train "$configs/demo.yaml" --set optim.lr=-1
grep -q "demo.yaml (--set): optim.lr: -1 is outside" /tmp/ldmc_cli_out.$$ || fail "a bad override is not named"
expect_status 1 "$ldmc" train /nonexistent.yaml
grep -q "/nonexistent.yaml: cannot open" /tmp/ldmc_cli_out.$$ || fail "a missing training config is not named"
shapes=$(mktemp -d)
expect_status 0 "$ldmc" demo-data "$shapes" --per-class 3
[ "$(find "$shapes" -name '*.png' -o -name '*.jpg' | wc -l)" -eq 12 ] || fail "demo-data: not 12 pictures"
for c in circle cross square triangle; do [ -d "$shapes/$c" ] || fail "demo-data: no $c folder"; done
rm -rf "$shapes"

rm -f /tmp/ldmc_cli_out.$$
if [ "$failures" -ne 0 ]; then
    echo "$failures CLI check(s) failed" >&2
    exit 1
fi
echo "all CLI checks passed"
