// Data parallelism end to end: `ldmc train` under `mpirun -np 2` (MPI on the CPU) against one
// process with the doubled batch, against itself, with ZeRO-1, resumed at 2 and at 1 rank, with a
// rank that dies or hangs, and pre-empted by SIGUSR1. Needs mpirun (Open MPI; skipped, status 77,
// without it). Runs as root too (OMPI_ALLOW_RUN_AS_ROOT*). With LDMC_TEST_NCCL (test_dist_nccl,
// ctest -L cuda) the same runs go to the GPUs, reduced by NCCL: it needs two visible devices.
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/device.h"
#include "data/shapes.h"
#include "harness.h"
#include "io/safetensors.h"
#include "nn/model_config.h"
#include "nn/vae.h"
#include "train/checkpoint.h"

#ifndef LDMC_CLI
#error "LDMC_CLI (the ldmc executable) must be defined"
#endif

#ifdef LDMC_TEST_NCCL
#define DEVICE "cuda"
#else
#define DEVICE "cpu"
#endif

static char fixture[1024];
static const double job_limit = 300; // seconds a job may take before the test kills it

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// The shapes data set and a tiny VAE's weights, once.
static void make_fixture(void) {
    if (fixture[0]) return;
    snprintf(fixture, sizeof fixture, "%s", test_tmp_path("fixture"));
    ldmc_err err = {0};
    char path[1200];
    snprintf(path, sizeof path, "%s/data", fixture);
    LDMC_CHECK(ldmc_shapes_write(path, 6, 1, &err) == 0, "%s", err.message);
    snprintf(path, sizeof path, "%s/vae.safetensors", fixture);
    test_write_tiny_vae(path, 5, false);
    // A tiny class-conditional UNet run with everything a step draws: timesteps, offset noise,
    // class dropout, min-SNR weights, v prediction, clipping, accumulation, EMA; checkpoints at
    // every other step. Batch 2 per rank; gradients in small buckets (several per step).
    snprintf(path, sizeof path, "%s/run.yaml", fixture);
    char text[4096];
    snprintf(text, sizeof text,
             "task: diffusion\nmodel: %s/tiny_unet_class.yaml\nvae: %s/tiny_vae.yaml\n"
             "vae_weights: vae.safetensors\n"
             "data: {source: images, path: data, labels: folders, buckets: {pixels: 1024, "
             "multiple: 8, max_ratio: 2}, batch_size: 2, workers: 1, prefetch: 2, flip: 0.5}\n"
             "diffusion: {prediction: v, offset_noise: 0.05, cond_dropout: 0.3, min_snr_gamma: 5}\n"
             "optim: {lr: 1.0e-3, warmup: 2, grad_clip: 1.0, accumulation: 2}\n"
             "ema: {decay: 0.9}\n"
             "sample: {steps: 2, per_class: 1, height: 16, width: 16}\n"
             "dist: {bucket_mb: 0.05, timeout: 120}\n"
             "train: {steps: 4, seed: 7, out: OUT, checkpoint_every: 2, keep: 5, log_every: 1, "
             "sample_every: 4, threads: 1, device: " DEVICE "}\n",
             test_config_dir(), test_config_dir());
    LDMC_CHECK(test_write_text(path, text) == 0, "cannot write %s", path);
    // the autoencoder's task: L1 + KL, the posterior sampled per sample
    snprintf(path, sizeof path, "%s/vae.yaml", fixture);
    snprintf(text, sizeof text,
             "task: vae\nmodel: %s/tiny_vae.yaml\n"
             "data: {source: images, path: data, labels: folders, buckets: {pixels: 1024, "
             "multiple: 8, max_ratio: 2}, batch_size: 2, workers: 1, prefetch: 2, flip: 0.5}\n"
             "optim: {lr: 1.0e-3, grad_clip: 1.0, accumulation: 2}\nema: {decay: 0.9}\n"
             "dist: {bucket_mb: 0.05}\n"
             "train: {steps: 1, seed: 7, out: OUT, threads: 1, device: " DEVICE "}\n",
             test_config_dir());
    LDMC_CHECK(test_write_text(path, text) == 0, "cannot write %s", path);
    // a text model whose encoders train too: three tables reduced and sharded (captions empty)
    snprintf(path, sizeof path, "%s/text.yaml", fixture);
    snprintf(text, sizeof text,
             "task: diffusion\nmodel: %s/tiny_unet_text.yaml\nvae: %s/tiny_vae.yaml\n"
             "vae_weights: vae.safetensors\ninit: text.init\n"
             "text: {vocab: %s/tiny_bpe, uncond: zeros, train: true, lr: [1.0e-3, 5.0e-4]}\n"
             "data: {source: images, path: data, buckets: {pixels: 1024, multiple: 8, "
             "max_ratio: 2}, batch_size: 2, workers: 1, prefetch: 2}\n"
             "diffusion: {cond_dropout: 0.3}\n"
             "optim: {lr: 1.0e-3, grad_clip: 1.0, accumulation: 2}\nema: {decay: 0.9}\n"
             "dist: {bucket_mb: 0.05}\n"
             "train: {steps: 1, seed: 7, out: OUT, threads: 1, device: " DEVICE "}\n",
             test_config_dir(), test_config_dir(), test_data_dir());
    LDMC_CHECK(test_write_text(path, text) == 0, "cannot write %s", path);
}

typedef struct job {
    int ranks;       // 0: one process without a launcher
    const char *out; // the run's folder under the fixture
    const char *sets[6];
    const char *fault; // LDMC_DIST_TEST_FAULT
    const char *kill;  // LDMC_CHECKPOINT_KILL_POINT
    bool resume;
    int signal_after; // send SIGUSR1 to the job once metrics.jsonl has this many lines (0: none)
    bool emulated;    // the CLI built on the CPU emulation of the CUDA kernels, train.device cuda
    const char *const *cmd; // another command than `train CONFIG --set train.out=...` (argv)
    const char *config;     // the fixture's config: "run" (the default) or "vae"
} job;

static const char *run_path(const char *out, const char *file) {
    static char path[8][1400];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 1400, "%s/%s%s%s", fixture, out, file[0] ? "/" : "", file);
    return p;
}

static int lines_of(const char *path) {
    FILE *f = fopen(path, "r");
    int n = 0;
    for (int c; f && (c = fgetc(f)) != EOF;)
        n += c == '\n';
    if (f) fclose(f);
    return n;
}

// Runs the job in its own process group, its output appended to <fixture>/<out>.log; returns the
// exit status (128 + a signal), and the seconds it took in *took. A job past job_limit is killed
// and fails the test.
static int run_job(const job *j, double *took) {
    char config[1200], log[1400], out_set[1300];
    snprintf(config, sizeof config, "%s/%s.yaml", fixture, j->config ? j->config : "run");
    snprintf(log, sizeof log, "%s/%s.log", fixture, j->out);
    snprintf(out_set, sizeof out_set, "train.out=%s/%s", fixture, j->out);
    const char *argv[48];
    int n = 0;
    char np[16];
    snprintf(np, sizeof np, "%d", j->ranks);
    if (j->ranks > 0) {
        const char *mpirun[] = {"mpirun", "--oversubscribe", "--bind-to", "none", "-np", np};
        for (size_t k = 0; k < sizeof mpirun / sizeof *mpirun; k++)
            argv[n++] = mpirun[k];
    }
#ifdef LDMC_CLI_EMULATED
    argv[n++] = j->emulated ? LDMC_CLI_EMULATED : LDMC_CLI;
#else
    argv[n++] = LDMC_CLI;
#endif
    for (int k = 0; j->cmd && j->cmd[k] && n < 46; k++)
        argv[n++] = j->cmd[k];
    if (!j->cmd) {
        argv[n++] = "train";
        argv[n++] = config;
        argv[n++] = "--set";
        argv[n++] = out_set;
    }
    if (j->emulated) argv[n++] = "--set", argv[n++] = "train.device=cuda";
    for (int k = 0; k < 6 && j->sets[k]; k++)
        argv[n++] = "--set", argv[n++] = j->sets[k];
    if (j->resume) argv[n++] = "--resume", argv[n++] = "latest";
    argv[n] = NULL;
    fflush(stdout);
    double start = now();
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        if (!freopen(log, "a", stdout) || dup2(fileno(stdout), 2) < 0) _exit(126);
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
        setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
        setenv("LDMC_THREADS", "1", 1);
        // NCCL: the same algorithm at every call (NVLink SHARP's reductions are not
        // deterministic, NVIDIA/nccl#1497), so that two runs can be compared bit for bit
        setenv("NCCL_NVLS_ENABLE", "0", 1);
        setenv("NCCL_ALGO", "Ring", 1);
        setenv("NCCL_PROTO", "Simple", 1);
        // The sanitizer build: Open MPI keeps allocations to the end of a rank's process, in
        // frames LeakSanitizer cannot name (so not suppressible): leak checks are off for the
        // ranks of mpirun jobs (memory errors are still caught; the one-process runs check leaks).
        if (j->ranks > 0) setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
        if (j->fault) setenv("LDMC_DIST_TEST_FAULT", j->fault, 1);
        if (j->kill) setenv("LDMC_CHECKPOINT_KILL_POINT", j->kill, 1);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    setpgid(pid, pid);
    int status = 0;
    bool signalled = false;
    for (;;) {
        pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid) break;
        if (j->signal_after && !signalled &&
            lines_of(run_path(j->out, "metrics.jsonl")) >= j->signal_after) {
            kill(pid, SIGUSR1); // mpirun passes SIGUSR1 on to every rank
            signalled = true;
        }
        if (now() - start > job_limit) {
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            test_fail_at(__FILE__, __LINE__, "%s: still running after %.0f s: killed", j->out,
                         job_limit);
            return -1;
        }
        usleep(20000);
    }
    *took = now() - start;
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

static const char *checkpoint(const char *out, int step, const char *file) {
    char name[256];
    snprintf(name, sizeof name, "checkpoints/step-%08d/%s", step, file);
    return run_path(out, name);
}

// The largest |a - b| over every tensor of the files at `a` (the tensors of each file of `b`
// looked up by name across them), and the largest |a|; -1 when a tensor is missing.
static double max_difference(const char *a, const char *const *b, int n_b, double *scale) {
    ldmc_err err = {0};
    ldmc_safetensors sa, sb[8];
    *scale = 0;
    if (ldmc_safetensors_open(&sa, a, &err) != 0) return -1;
    double worst = 0;
    int opened = 0;
    while (opened < n_b && ldmc_safetensors_open(&sb[opened], b[opened], &err) == 0)
        opened++;
    if (opened < n_b) worst = -1;
    for (int i = 0; i < sa.count && worst >= 0; i++) {
        const ldmc_st_tensor *ta = &sa.tensors[i], *tb = NULL;
        const ldmc_safetensors *in = NULL;
        for (int k = 0; k < n_b && !tb; k++)
            tb = ldmc_safetensors_find(in = &sb[k], ta->name);
        int64_t n = ldmc_st_numel(ta);
        if (!tb || ldmc_st_numel(tb) != n) {
            worst = -1;
            break;
        }
        float *va = malloc((size_t)(n ? n : 1) * sizeof *va),
              *vb = malloc((size_t)(n ? n : 1) * sizeof *vb);
        LDMC_CHECK(va && vb, "out of memory");
        LDMC_CHECK(ldmc_safetensors_read(&sa, ta, va, LDMC_F32, &err) == 0 &&
                       ldmc_safetensors_read(in, tb, vb, LDMC_F32, &err) == 0,
                   "%s", err.message);
        for (int64_t e = 0; e < n; e++) {
            worst = fmax(worst, fabs((double)va[e] - vb[e]));
            *scale = fmax(*scale, fabs((double)va[e]));
        }
        free(va);
        free(vb);
    }
    ldmc_safetensors_close(&sa);
    for (int k = 0; k < opened; k++)
        ldmc_safetensors_close(&sb[k]);
    return worst;
}

// The loss column of metrics.jsonl, n values.
static int losses(const char *out, double *loss, int n) {
    FILE *f = fopen(run_path(out, "metrics.jsonl"), "r");
    int k = 0;
    char line[512];
    while (f && k < n && fgets(line, sizeof line, f)) {
        const char *at = strstr(line, "\"loss\":");
        loss[k++] = at ? strtod(at + 7, NULL) : NAN;
    }
    if (f) fclose(f);
    return k;
}

// The checkpoint of `step` and metrics.jsonl the same, bit for bit; with `optimizer_too` also
// the optimizer file and state.json (which name the optimizer files).
// After one step, `two` (2 ranks x batch 2) and `one` (one process x batch 4) hold the same
// gradient to rounding: Adam's m is (1 - β1) g. The weights moved by lr m/(√v + ε) ~ lr sign(g),
// which amplifies the rounding where a gradient is itself rounding noise (|g| ~ 1e-11, well under
// ε = 1e-8, behind zero-initialized layers, or where the VAE's terms cancel): by up to a quarter
// of lr = 1e-3 (lr δ / 4 for a relative difference δ in a gradient of size ε).
// `gpu`: the convolutions' weight gradients come back in bf16 (as cuDNN's do), each rank's part
// rounded apart: the gradients then agree to bf16's resolution, 2^-7 of each tensor's scale.
static void check_one_step(const char *two, const char *one, bool gpu) {
    double scale, d = max_difference(checkpoint(two, 1, "optimizer.safetensors"),
                                     (const char *[]){checkpoint(one, 1, "optimizer.safetensors")},
                                     1, &scale);
    printf("  %s: step 1 Adam state: max |2 ranks - 1 rank| = %.3g (largest value %.3g)\n", two, d,
           scale);
    CHECK(d >= 0 && d <= (gpu ? 0x1p-7 : 1e-5) * scale,
          "%s: the step-1 gradients differ by %g of %g", two, d, scale);
    d = max_difference(checkpoint(two, 1, "model.safetensors"),
                       (const char *[]){checkpoint(one, 1, "model.safetensors")}, 1, &scale);
    printf("  %s: step 1 weights: max |2 ranks - 1 rank| = %.3g\n", two, d);
    // (a missed or doubled update would differ by a whole step, lr = 1e-3)
    CHECK(d >= 0 && d <= 2.5e-4, "%s: the step-1 weights differ by %g", two, d);
}

static void check_same_run(const char *a, const char *b, int step, bool optimizer_too) {
    const char *files[] = {"model.safetensors", "ema.safetensors", "state.json",
                           "optimizer.safetensors"};
    for (int i = 0; i < (optimizer_too ? 4 : 2); i++)
        CHECK(test_same_file(checkpoint(a, step, files[i]), checkpoint(b, step, files[i])),
              "%s of step %d differs between %s and %s", files[i], step, a, b);
    CHECK(test_same_file(run_path(a, "metrics.jsonl"), run_path(b, "metrics.jsonl")),
          "metrics.jsonl differs between %s and %s", a, b);
}

static bool have_mpirun(void) { return system("mpirun --version > /dev/null 2>&1") == 0; }

// The runs the later tests compare with: 2 ranks x batch 2, and 1 process x batch 4.
static void make_reference_runs(void) {
    static bool made;
    if (made) return;
    made = true;
    make_fixture();
    double took;
    job two = {.ranks = 2, .out = "two"}, one = {.out = "one", .sets = {"data.batch_size=4"}};
    REQUIRE(run_job(&two, &took) == 0, "mpirun -np 2: see %s/two.log", fixture);
    printf("  2 ranks x batch 2: %.1f s\n", took);
    REQUIRE(run_job(&one, &took) == 0, "1 rank x batch 4: see %s/one.log", fixture);
    printf("  1 rank x batch 4: %.1f s\n", took);
    job two1 = {.ranks = 2, .out = "two_1", .sets = {"train.steps=1"}},
        one1 = {.out = "one_1", .sets = {"data.batch_size=4", "train.steps=1"}};
    REQUIRE(run_job(&two1, &took) == 0 && run_job(&one1, &took) == 0, "one-step runs: see %s",
            fixture);
}

static void test_two_ranks_equal_one_rank_with_the_doubled_batch(void) {
    make_reference_runs();
    const char *log = run_path("two.log", "");
    CHECK(test_count_in_file(log, "data parallel: 2 ranks (mpirun), global batch 2 x 2 = 4") == 1,
          "the 2-rank run does not announce its ranks and global batch (%s)", log);
    CHECK(test_count_in_file(log, "rank 1: ") == 1 && test_count_in_file(log, "each once") == 1,
          "the per-rank sample counts are not printed, or do not add up (%s)", log);
    CHECK(test_count_in_file(log, "| loss ") == 4,
          "only rank 0 prints the progress line (%d lines)", test_count_in_file(log, "| loss "));
    // the hook starts buckets as backward finishes them: all but the last ones (the shared
    // conditioning weights, finished by backward's last nodes) start before backward ends
    FILE *f = fopen(log, "r");
    char line[512];
    int overlap = -1;
    while (f && fgets(line, sizeof line, f))
        sscanf(line, "data parallel: %d%% of the gradient buckets", &overlap);
    if (f) fclose(f);
    printf("  buckets reduced while backward ran: %d%%\n", overlap);
    CHECK(overlap >= 80, "only %d%% of the buckets were reduced during backward", overlap);
    // The same samples, draws and updates, summed in another order: float rounding apart.
#ifdef LDMC_TEST_NCCL
    check_one_step("two_1", "one_1", true);
#else
    check_one_step("two_1", "one_1", false);
#endif
#ifndef LDMC_TEST_NCCL
    // On the CPU (f32 throughout) that holds over the 4 steps. (With bf16 working weights, a
    // master weight a rounding away from a bf16 boundary rounds the other way: from step 2 on,
    // GPU runs differ by bf16's resolution, and only step 1 is compared.)
    for (int step = 2; step <= 4; step += 2) {
        const char *files[] = {"model.safetensors", "ema.safetensors", "optimizer.safetensors"};
        for (int i = 0; i < 3; i++) {
            double scale,
                d = max_difference(checkpoint("two", step, files[i]),
                                   (const char *[]){checkpoint("one", step, files[i])}, 1, &scale);
            printf("  step %d %s: max |2 ranks - 1 rank| = %.3g (largest value %.3g)\n", step,
                   files[i], d, scale);
            CHECK(d >= 0 && d <= (i < 2 ? 1e-4 : 1e-5 * scale), "%s at step %d: %g", files[i], step,
                  d);
        }
    }
#endif
    double a[4], b[4];
    REQUIRE(losses("two", a, 4) == 4 && losses("one", b, 4) == 4, "4 metrics lines each");
    CHECK(fabs(a[0] - b[0]) <= 1e-5 * fabs(b[0]), "step 1 loss %.9g vs %.9g", a[0], b[0]);
#ifndef LDMC_TEST_NCCL
    for (int k = 1; k < 4; k++)
        CHECK(fabs(a[k] - b[k]) <= 1e-5 * fabs(b[k]), "step %d loss %.9g vs %.9g", k + 1, a[k],
              b[k]);
#endif
    printf("  losses: %.7f %.7f %.7f %.7f (2 ranks) vs %.7f %.7f %.7f %.7f\n", a[0], a[1], a[2],
           a[3], b[0], b[1], b[2], b[3]);
}

static void test_two_ranks_twice_are_bit_identical(void) {
    make_reference_runs();
    double took;
    job again = {.ranks = 2, .out = "two_again"};
    REQUIRE(run_job(&again, &took) == 0, "see %s/two_again.log", fixture);
    check_same_run("two", "two_again", 4, true);
    CHECK(test_same_file(run_path("two", "model.safetensors"),
                         run_path("two_again", "model.safetensors")),
          "the final weights differ");
}

// ZeRO-1 on = off: the same bits on the CPU (at 2 ranks every sum has two terms, whatever the
// collective, and the gradient norm is summed per parameter in table order either way), the
// optimizer state in one file per rank. (On the GPU the norm is summed per rank's range: the
// clipping factor, and so the weights, may differ by rounding.)
static void check_zero_equals_replicated(const char *two, const char *zero, bool exact, int step) {
    if (exact) check_same_run(two, zero, step, false);
    const char *shards[] = {checkpoint(zero, step, "optimizer-00000-of-00002.safetensors"),
                            checkpoint(zero, step, "optimizer-00001-of-00002.safetensors")};
    double scale,
        d = max_difference(checkpoint(two, step, "optimizer.safetensors"), shards, 2, &scale);
    printf("  %s: max |Adam state (ZeRO) - (replicated)| = %.3g\n", zero, d);
    CHECK(d >= 0 && d <= (exact ? 0 : 1e-5 * scale),
          "Adam m, v under ZeRO differ from the replicated run's by %g (or are missing)", d);
    d = max_difference(checkpoint(two, step, "model.safetensors"),
                       (const char *[]){checkpoint(zero, step, "model.safetensors")}, 1, &scale);
    CHECK(d >= 0 && d <= (exact ? 0 : 1e-4), "%s: the weights differ by %g", zero, d);
    CHECK(access(checkpoint(zero, step, "optimizer.safetensors"), F_OK) != 0,
          "ZeRO writes no whole optimizer file");
}

static void test_zero_equals_replicated(void) {
    make_reference_runs();
    double took;
    job zero = {.ranks = 2, .out = "zero", .sets = {"dist.zero=true"}};
    REQUIRE(run_job(&zero, &took) == 0, "see %s/zero.log", fixture);
    CHECK(test_count_in_file(run_path("zero.log", ""), "ZeRO-1 (optimizer state sharded)") == 1,
          "ZeRO is not announced");
#ifdef LDMC_TEST_NCCL
    check_zero_equals_replicated("two", "zero", false, 4);
#else
    check_zero_equals_replicated("two", "zero", true, 4);
#endif
}

#ifdef LDMC_CLI_EMULATED
// The GPU trainer's data parallelism on the emulated GPU (the kernels computed on the CPU, MPI in
// NCCL's place): ZeRO's sharded device buffers, the bf16 working weights gathered after each
// update, the masters gathered for the checkpoint. 2 ranks against one GPU with the doubled
// batch, and ZeRO against replicated state.
static void test_emulated_gpu_ranks(void) {
    make_fixture();
    double took;
    job two = {.ranks = 2, .out = "gpu_two", .emulated = true},
        zero = {.ranks = 2, .out = "gpu_zero", .emulated = true, .sets = {"dist.zero=true"}},
        two1 = {.ranks = 2, .out = "gpu_two_1", .emulated = true, .sets = {"train.steps=1"}},
        one1 = {
            .out = "gpu_one_1", .emulated = true, .sets = {"data.batch_size=4", "train.steps=1"}};
    REQUIRE(run_job(&two, &took) == 0, "see %s/gpu_two.log", fixture);
    REQUIRE(run_job(&zero, &took) == 0, "see %s/gpu_zero.log", fixture);
    REQUIRE(run_job(&two1, &took) == 0 && run_job(&one1, &took) == 0, "see %s/gpu_*_1.log",
            fixture);
    check_zero_equals_replicated("gpu_two", "gpu_zero", false, 4);
    check_one_step("gpu_two_1", "gpu_one_1", true);
}
#endif

// Killed after the step-2 checkpoint, resumed at 2 ranks: the same bits as the straight run; and
// a ZeRO checkpoint resumed by one process (re-sharded, batch 4: the same global batch) ends where
// the 2-rank run did, to float rounding.
static void test_resume_at_two_and_at_one_rank(void) {
    make_reference_runs();
    double took;
    job killed = {.ranks = 2, .out = "killed", .kill = "saved@2"};
    CHECK(run_job(&killed, &took) != 0, "the killed job exits non-zero");
    CHECK(access(checkpoint("killed", 2, "state.json"), F_OK) == 0 &&
              access(checkpoint("killed", 4, "state.json"), F_OK) != 0,
          "the killed job has the step-2 checkpoint only");
    job resumed = {.ranks = 2, .out = "killed", .resume = true};
    REQUIRE(run_job(&resumed, &took) == 0, "see %s/killed.log", fixture);
    check_same_run("two", "killed", 4, true);

    job zero = {.ranks = 2, .out = "zero_to_one", .sets = {"dist.zero=true", "train.steps=2"}};
    REQUIRE(run_job(&zero, &took) == 0, "see %s/zero_to_one.log", fixture);
    job one = {.out = "zero_to_one", .resume = true, .sets = {"data.batch_size=4"}};
    REQUIRE(run_job(&one, &took) == 0, "resume 2 -> 1 rank: see %s/zero_to_one.log", fixture);
    double scale,
        d = max_difference(checkpoint("zero_to_one", 4, "model.safetensors"),
                           (const char *[]){checkpoint("two", 4, "model.safetensors")}, 1, &scale);
    printf("  resumed 2 -> 1 rank (ZeRO shards re-read): max |w - w(2 ranks)| = %.3g\n", d);
#ifdef LDMC_TEST_NCCL
    CHECK(d >= 0 && d <= 1e-2, "2 -> 1 rank: %g", d); // (bf16 weights: see the test above)
#else
    CHECK(d >= 0 && d <= 1e-4, "2 -> 1 rank: %g", d); // (see the test above)
#endif
    // at batch 2 the global batch halves: the data resumes at the same point of its epoch
    job half = {.out = "zero_to_half", .resume = true};
    char from[1400], to[1400], cmd[4400];
    snprintf(from, sizeof from, "%s/zero_to_one/checkpoints/step-00000002", fixture);
    snprintf(to, sizeof to, "%s/zero_to_half/checkpoints", fixture);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp -r '%s' '%s/'", to, from, to);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    REQUIRE(run_job(&half, &took) == 0, "resume 2 -> 1 rank, batch 2: see %s/zero_to_half.log",
            fixture);
    CHECK(test_count_in_file(run_path("zero_to_half.log", ""),
                             "the global batch was 4 (2 ranks)") == 1,
          "the resume does not say the global batch changed");
}

// A rank that dies, or hangs, ends the job with a non-zero status in bounded time; the last
// checkpoint stays loadable.
static void test_a_failed_rank_ends_the_job(void) {
    make_fixture();
    double took;
    job die = {.ranks = 2, .out = "die", .fault = "die:1@3", .sets = {"train.steps=6"}};
    int status = run_job(&die, &took);
    printf("  rank 1 killed at step 3: the job ended with status %d after %.1f s\n", status, took);
    CHECK(status != 0 && took < 60, "a dead rank: status %d after %.0f s", status, took);
    job hang = {.ranks = 2,
                .out = "hang",
                .fault = "hang:1@3",
                .sets = {"train.steps=6", "dist.timeout=4"}};
    status = run_job(&hang, &took);
    printf("  rank 1 stopped (SIGSTOP) at step 3, dist.timeout 4 s: status %d after %.1f s\n",
           status, took);
    CHECK(status != 0 && took < 60, "a hung rank: status %d after %.0f s", status, took);
    CHECK(test_count_in_file(run_path("hang.log", ""), "no training step for") >= 1,
          "the watchdog does not say why it ended the job");
    for (int k = 0; k < 2; k++) {
        const char *out = k ? "hang" : "die";
        char dir[1400];
        ldmc_err err = {0};
        REQUIRE(ldmc_checkpoint_latest(run_path(out, ""), dir, sizeof dir, &err) == 0, "%s: %s",
                out, err.message);
        CHECK(strstr(dir, "step-00000002") != NULL, "%s: the last checkpoint is %s", out, dir);
        CHECK(test_same_file(checkpoint(out, 2, "model.safetensors"),
                             checkpoint("two", 2, "model.safetensors")),
              "%s: the step-2 checkpoint is not the one an undisturbed run wrote", out);
    }
}

// The autoencoder's task on 2 ranks: its L1 and KL terms are weighted by each rank's share like
// the diffusion loss; one step equals one process with the doubled batch to rounding.
static void test_vae_task_on_two_ranks(void) {
    make_fixture();
    double took;
    job two = {.ranks = 2, .out = "vae_two", .config = "vae"},
        one = {.out = "vae_one", .config = "vae", .sets = {"data.batch_size=4"}};
    REQUIRE(run_job(&two, &took) == 0 && run_job(&one, &took) == 0, "see %s/vae_*.log", fixture);
#ifdef LDMC_TEST_NCCL
    check_one_step("vae_two", "vae_one", true);
#else
    check_one_step("vae_two", "vae_one", false);
#endif
}

// Text encoders trained with the UNet: the model's and both encoders' tables are bucketed and
// reduced together, and under ZeRO each table is sharded; one step equals one process with the
// doubled batch to rounding, and ZeRO equals replicated bit for bit (CPU).
static void test_text_encoders_on_two_ranks(void) {
    make_fixture();
    char model[1200], init[1400];
    snprintf(model, sizeof model, "%s/tiny_unet_text.yaml", test_config_dir());
    snprintf(init, sizeof init, "%s/text.init", fixture);
    const char *init_args[] = {"init", model, init, NULL};
    double took;
    job make = {.out = "text_init", .cmd = init_args};
    REQUIRE(run_job(&make, &took) == 0, "ldmc init: see %s/text_init.log", fixture);
    job two = {.ranks = 2, .out = "te_two", .config = "text"},
        zero = {.ranks = 2, .out = "te_zero", .config = "text", .sets = {"dist.zero=true"}},
        one = {.out = "te_one", .config = "text", .sets = {"data.batch_size=4"}};
    REQUIRE(run_job(&two, &took) == 0 && run_job(&zero, &took) == 0 && run_job(&one, &took) == 0,
            "see %s/te_*.log", fixture);
#ifdef LDMC_TEST_NCCL
    check_one_step("te_two", "te_one", true);
    check_zero_equals_replicated("te_two", "te_zero", false, 1);
#else
    check_one_step("te_two", "te_one", false);
    check_zero_equals_replicated("te_two", "te_zero", true, 1);
#endif
}

// `mpirun -np 2 ldmc sample`: each rank makes its shard (rank/world) of the images, and together
// they are those of one process, byte for byte.
static void test_sample_under_mpirun_shares_the_images(void) {
    make_reference_runs();
    char model[1200], vae_config[1200], dirs[2][1400];
    snprintf(model, sizeof model, "%s/tiny_unet_class.yaml", test_config_dir());
    snprintf(vae_config, sizeof vae_config, "%s/tiny_vae.yaml", test_config_dir());
    for (int k = 0; k < 2; k++) {
        snprintf(dirs[k], sizeof dirs[k], "%s", run_path(k ? "sampled_one" : "sampled_two", ""));
        const char *args[] = {
            "sample",  model,      "--weights",     run_path("two", "model.safetensors"),
            "--vae",   vae_config, "--vae-weights", run_path("vae.safetensors", ""),
            "--class", "0,1,2",    "--n",           "2",
            "--seed",  "9",        "--steps",       "3",
            "--size",  "16x16",    "--no-grid",     "--out",
            dirs[k],   NULL};
        job j = {.ranks = k ? 0 : 2, .out = k ? "sampled_one" : "sampled_two", .cmd = args};
        double took;
        REQUIRE(run_job(&j, &took) == 0, "ldmc sample: see %s/%s.log", fixture, j.out);
    }
    char cmd[3000];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && ls | wc -l | grep -qx 6 && for f in *.png; do cmp -s \"$f\" "
             "'%s'/\"$f\" || exit 1; done",
             dirs[0], dirs[1]);
    CHECK(system(cmd) == 0, "2 ranks' images differ from one process's (%s, %s)", dirs[0], dirs[1]);
}

// SIGUSR1 (SLURM's warning before pre-emption) to mpirun: every rank stops after the same step
// with a checkpoint, and a resume ends where the undisturbed run did.
static void test_preemption_signal_saves_and_resumes(void) {
    make_reference_runs();
    double took;
    job pre = {.ranks = 2, .out = "preempted", .signal_after = 1};
    int status = run_job(&pre, &took);
    CHECK(status != 0, "a pre-empted job exits non-zero (%d)", status);
    char dir[1400];
    ldmc_err err = {0};
    REQUIRE(ldmc_checkpoint_latest(run_path("preempted", ""), dir, sizeof dir, &err) == 0,
            "no checkpoint after SIGUSR1: %s", err.message);
    CHECK(test_count_in_file(run_path("preempted.log", ""), "interrupted (SIGUSR1)") +
                  test_count_in_file(run_path("preempted.log", ""), "interrupted (SIGTERM)") >=
              1,
          "the stop is not reported");
    job resumed = {.ranks = 2, .out = "preempted", .resume = true};
    REQUIRE(run_job(&resumed, &took) == 0, "see %s/preempted.log", fixture);
    check_same_run("two", "preempted", 4, true);
}

int main(int argc, char **argv) {
    if (!have_mpirun()) {
        printf("no mpirun: skipped\n");
        return 77;
    }
#ifdef LDMC_TEST_NCCL
    if (ldmc_gpu_device_count() < 2) {
        printf("fewer than 2 CUDA devices: skipped\n");
        return 77;
    }
#endif
    static const test_entry tests[] = {
        TEST_ENTRY(test_two_ranks_equal_one_rank_with_the_doubled_batch),
        TEST_ENTRY(test_two_ranks_twice_are_bit_identical),
        TEST_ENTRY(test_zero_equals_replicated),
        TEST_ENTRY(test_resume_at_two_and_at_one_rank),
        TEST_ENTRY(test_a_failed_rank_ends_the_job),
        TEST_ENTRY(test_preemption_signal_saves_and_resumes),
        TEST_ENTRY(test_vae_task_on_two_ranks),
        TEST_ENTRY(test_text_encoders_on_two_ranks),
        TEST_ENTRY(test_sample_under_mpirun_shares_the_images),
#ifdef LDMC_CLI_EMULATED
        TEST_ENTRY(test_emulated_gpu_ranks),
#endif
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
