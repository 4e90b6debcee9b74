// The UNet training-step benchmark behind `ldmc bench train`: the SDXL recipe's step on synthetic
// inputs (latents, timesteps, a 77-token context and the vector conditioning, random) — forward,
// MSE against an f32 target, backward, global-norm clipping at 1, AdamW — on the GPU (bf16
// activations, fp32 master weights) or the CPU; then one forward at batch 2 without gradients
// (a classifier-free-guidance sampling step). Reports the median step time, images per second,
// the step's matrix-product FLOPs as the ops count them (achieved TFLOP/s), the memory of the
// weights, optimizer and activations, and with `profile` the time per op kind. A dry run counts
// FLOPs and activation memory without computing, on any machine. The step replays its memory
// plan (core/memplan.h), made by a dry run of the same step.
// Tested by tests/test_cli.sh (a tiny config on the CPU, and a dry run of SDXL base).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/memplan.h"
#include "core/tape.h"
#include "nn/model_config.h"

typedef struct ldmc_bench_options {
    int batch, height, width; // image pixels: latents are 1/8 of each side
    int reps, warmup;
    ldmc_device device;
    bool recompute; // gradient checkpointing of every ResBlock and transformer
    bool recompute_projections; // q, k, v and feed-forward input products made again in backward
    bool fused_backward; // AdamW of each parameter during backward, no gradient buffer (and no
                         // clipping: optim.fused_backward)
    bool profile;
    bool dry_run;
    uint64_t seed;
    // the dry run's plan of one rank of a data-parallel run: `ranks` ranks (1: one process),
    // ZeRO-1 (the fp32 master, Adam m and v and the EMA sharded), an fp32 EMA
    int ranks;
    bool zero, ema;
} ldmc_bench_options;

typedef struct ldmc_bench_result {
    int64_t parameters;
    double step_ms;           // median over reps
    double img_per_s;         // batch / step time
    double flops;             // matrix-product FLOPs of one step (forward + backward)
    double tflops;            // flops / step time
    size_t weight_bytes;      // working weights, master copy, gradients, Adam m and v (and the
                              // EMA with opts.ema): one rank's (its largest ZeRO range)
    size_t activation_bytes;  // activations and their gradients: the step's memory plan's peak
    ldmc_step_plan plan;      // that plan (ldmc_plan_free it); plan.unplanned: nothing freed
    size_t workspace_bytes;   // the GPU's shared workspace
    double guided_forward_ms; // median of the sampling forwards (no gradients) of one image:
    int guided_batch;         // the UNet at batch 2 with guidance; 1 when there is nothing to guide
    ldmc_profile profile;     // with opts.profile: time per op kind over one step, sorted
} ldmc_bench_result;

// The median of n timings (sorts v).
double ldmc_median(double *v, int n);

int ldmc_unet_train_bench(const ldmc_unet_config *cfg, const ldmc_bench_options *opts,
                          ldmc_bench_result *result, ldmc_err *err);
