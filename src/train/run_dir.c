// The run's folder (see trainer_parts.h): one run at a time (<out>/lock), a new run refused where
// checkpoints exist, resuming (every changed setting named), saving checkpoints
// (src/train/checkpoint.h) and the final weights. Tested by tests/test_train.c.
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/files.h"
#include "io/model_files.h"
#include "nn/models.h"
#include "train/trainer_parts.h"

// One run per output folder: <out>/lock is held (flock) for the run's life, and released by the
// kernel however the process ends.
static int lock_out(run_dir *d, const char *out, ldmc_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/lock", out);
    d->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (d->lock_fd < 0) return LDMC_ERR(err, "%s: cannot create: %s", path, strerror(errno));
    if (flock(d->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return LDMC_ERR(err, "%s: another run is using this folder (%s is locked)", out, path);
    return 0;
}

static int refuse_existing(const char *out, ldmc_err *err) {
    char path[4200];
    ldmc_err ignore = {0};
    if (ldmc_checkpoint_latest(out, path, sizeof path, &ignore) == 0)
        return LDMC_ERR(
            err,
            "%s already holds checkpoints (%s): pass --resume latest to continue that run, or "
            "choose another train.out",
            out, path);
    return 0;
}

int run_dir_open(run_dir *d, const ldmc_train_config *cfg, bool resuming, ldmc_err *err) {
    *d = (run_dir){.lock_fd = -1};
    // Whether this run made the folder: of two runs starting at once, one mkdir succeeds.
    char parent[LDMC_PATH_MAX];
    snprintf(parent, sizeof parent, "%s", cfg->out);
    if (ldmc_mkdirs(dirname(parent), err) != 0) return -1;
    d->created = mkdir(cfg->out, 0777) == 0;
    if (!d->created && errno != EEXIST)
        return LDMC_ERR(err, "%s: cannot create: %s", cfg->out, strerror(errno));
    if (lock_out(d, cfg->out, err) != 0) return -1;
    d->locked = true;
    if (!resuming && refuse_existing(cfg->out, err) != 0) return -1;
    int removed = ldmc_checkpoint_clean(cfg->out);
    if (removed)
        printf("removed %d unfinished checkpoint(s) left by an interrupted save\n", removed);
    return 0;
}

void run_dir_close(run_dir *d, const char *out, bool refused) {
    if (d->lock_fd >= 0) close(d->lock_fd);
    if (refused && d->created && d->locked) ldmc_remove_tree(out);
    d->lock_fd = -1;
}

static void print_change(const char *path, const char *was, const char *now, void *ctx) {
    if ((*(int *)ctx)++ == 0)
        printf("resume: settings changed since the checkpoint (the run goes on with the new "
               "ones; a changed batch size or data order makes it differ from an uninterrupted "
               "run):\n");
    printf("  %s: %s -> %s\n", path, was ? was : "(not set)", now ? now : "(not set)");
}

// A resumed run names every setting that differs from its checkpoint's config.yaml.
static void report_config_changes(const ldmc_train_config *cfg, const char *dir) {
    char path[4300];
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    ldmc_err ignore = {0};
    ldmc_cfg *was = ldmc_cfg_load(path, &ignore);
    ldmc_cfg *now = ldmc_cfg_parse(cfg->resolved_yaml, cfg->source_path, &ignore);
    int changes = 0;
    if (!was)
        printf("resume: %s cannot be read: whether the settings changed is unknown\n", path);
    else if (now)
        ldmc_cfg_diff(was, now, print_change, &changes);
    ldmc_cfg_free(was);
    ldmc_cfg_free(now);
}

// The model trained, and the text encoders when they are trained too (their descriptors' views
// live in the trainer, beside the tables).
static ldmc_checkpoint_model checkpoint_model(trainer *T) {
    ldmc_checkpoint_model m = {.model = &T->model, .ema = T->cfg->ema_decay > 0, .zero = T->zero};
    for (int i = 0; i < trainer_text_trained(T); i++) {
        T->text_models[i] = ldmc_text_model(&T->text.enc[i]);
        m.extra[m.n_extra++] = &T->text_models[i];
    }
    return m;
}

// The GPU's master, m, v and EMA of every trained table into the host buffers (no-op on the CPU;
// under ZeRO the ranks' ranges of the master are gathered into every rank's host weights).
static void tables_to_host(trainer *T) {
    ldmc_params *tables[1 + LDMC_MAX_TEXT_ENCODERS];
    int n = trainer_tables(T, tables);
    for (int k = 0; k < n; k++) {
        if (!tables[k]->on_device) continue;
        ldmc_params_to_host(tables[k]);
        if (!tables[k]->sharded) continue;
        size_t *ranges = malloc(((size_t)T->dist->world + 1) * sizeof *ranges);
        LDMC_CHECK(ranges, "out of memory");
        ldmc_zero_ranges(tables[k], T->dist->world, ranges);
        ldmc_dist_allgather_ranges(tables[k]->buffers[LDMC_ROLE_WEIGHTS], ranges);
        free(ranges);
    }
}

// ZeRO: every rank's range of the EMA gathered whole on rank 0, in full[k] (malloc'd; NULL on the
// other ranks and without ZeRO), for the checkpoint and the final weights.
static void gather_ema(trainer *T, ldmc_checkpoint_model *m, float **full) {
    if (!T->zero || !m->ema) return;
    ldmc_params *tables[1 + LDMC_MAX_TEXT_ENCODERS];
    int n = trainer_tables(T, tables);
    size_t *ranges = malloc(((size_t)T->dist->world + 1) * sizeof *ranges);
    LDMC_CHECK(ranges, "out of memory");
    for (int k = 0; k < n; k++) {
        ldmc_zero_ranges(tables[k], T->dist->world, ranges);
        if (T->lead) {
            full[k] = calloc(tables[k]->total ? tables[k]->total : 1, sizeof(float));
            LDMC_CHECK(full[k], "out of memory for the EMA weights");
        }
        ldmc_dist_gather_ranges(full[k], tables[k]->buffers[LDMC_ROLE_EMA], ranges);
        m->ema_full[k] = full[k];
    }
    free(ranges);
}

int run_dir_resume(trainer *T, const char *resume, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    char dir[4200];
    if (!strcmp(resume, "latest")) {
        if (ldmc_checkpoint_latest(cfg->out, dir, sizeof dir, err) != 0) return -1;
    } else {
        snprintf(dir, sizeof dir, "%s", resume);
    }
    ldmc_checkpoint_model m = checkpoint_model(T);
    if (ldmc_checkpoint_load(dir, &m, &T->st, err) != 0) return -1;
    if (T->st.seed != cfg->seed)
        return LDMC_ERR(
            err,
            "%s: saved with seed %llu, the config says %llu: a resumed run keeps its seed "
            "(set train.seed back)",
            dir, (unsigned long long)T->st.seed, (unsigned long long)cfg->seed);
    printf("resume: %s at step %lld (%lld batches consumed, %lld steps skipped so far)\n", dir,
           (long long)T->st.step, (long long)T->st.batches, (long long)T->st.skipped_steps);
    T->dir.resumed = true;
    report_config_changes(cfg, dir);
    if (T->st.global_batch == 0) { // saved before data parallelism: one process, its batch size
        char path[4300];
        snprintf(path, sizeof path, "%s/config.yaml", dir);
        ldmc_err ignore = {0};
        ldmc_cfg *was = ldmc_cfg_load(path, &ignore);
        int64_t batch = 4; // (the default of data.batch_size)
        if (was)
            ldmc_cfg_int(ldmc_cfg_get(was, "data"), "batch_size", false, 1, INT32_MAX, &batch,
                         &ignore);
        ldmc_cfg_free(was);
        T->st.global_batch = batch;
    }
    return 0;
}

int run_dir_save(trainer *T, char *saved, ldmc_err *err) {
    ldmc_dist_watchdog_arm(false); // (a save takes as long as the disks do)
    // The metrics of the steps a checkpoint holds reach the disk first: a run resumed from it
    // keeps every line up to its step.
    int rc = T->lead ? train_log_sync(&T->log, T->cfg->out, err) : 0;
    rc = ldmc_dist_agree(rc, "metrics.jsonl", err);
    if (rc == 0) {
        tables_to_host(T);
        ldmc_checkpoint_model m = checkpoint_model(T);
        float *ema[3] = {NULL, NULL, NULL};
        gather_ema(T, &m, ema);
        T->st.world = T->dist->world;
        T->st.global_batch = (int64_t)T->dist->world * T->cfg->batch_size;
        rc = ldmc_checkpoint_save(T->cfg->out, &m, &T->st, T->cfg->resolved_yaml, T->cfg->keep,
                                  saved, err);
        for (int k = 0; k < 3; k++)
            free(ema[k]);
    }
    ldmc_dist_watchdog_arm(true);
    return rc == 0 ? 0 : -1;
}

// The final weights beside the checkpoints: <out>/model.safetensors, the EMA weights when EMA is
// on (the ones to sample with), in the official layout.
int run_dir_export(trainer *T, ldmc_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", T->cfg->out);
    ldmc_dist_watchdog_arm(false);
    tables_to_host(T);
    ldmc_checkpoint_model m = checkpoint_model(T);
    float *ema[3] = {NULL, NULL, NULL};
    gather_ema(T, &m, ema);
    ldmc_save_part parts[3];
    for (int k = 0; k <= m.n_extra; k++) {
        ldmc_key_map map = {.layout = LDMC_LAYOUT_OFFICIAL, .model = k ? m.extra[k - 1] : m.model};
        parts[k] = (ldmc_save_part){map, m.ema ? LDMC_ROLE_EMA : LDMC_ROLE_WEIGHTS, ema[k]};
    }
    int rc = T->lead ? ldmc_save_weights(path, parts, 1 + m.n_extra, LDMC_F32, NULL, err) : 0;
    for (int k = 0; k < 3; k++)
        free(ema[k]);
    rc = ldmc_dist_agree(rc, path, err); // (the other ranks wait here for rank 0's write)
    ldmc_dist_watchdog_arm(true);
    return rc;
}
