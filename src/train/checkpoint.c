// Training checkpoints (see checkpoint.h). Tested by tests/test_train.c.
#include "train/checkpoint.h"

#include "io/files.h"
#include "train/dist.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LDMC_STATE_FORMAT "ldmc training checkpoint 1"

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

// A test hook: LDMC_CHECKPOINT_KILL_POINT=<name>[@<step>] kills the process (SIGKILL) at that
// point of a checkpoint write (of that step only, when given), to prove that a crash there leaves
// the previous checkpoints loadable. Points: model, optimizer, before-rename, saved.
static void maybe_die(const char *point, int64_t step) {
    const char *want = getenv("LDMC_CHECKPOINT_KILL_POINT");
    if (!want) return;
    size_t n = strlen(point);
    if (strncmp(want, point, n) != 0) return;
    if (want[n] == '\0' || (want[n] == '@' && strtoll(want + n + 1, NULL, 10) == step))
        raise(SIGKILL);
}

static int write_text(const char *path, const char *text, ldmc_err *err) {
    FILE *f = fopen(path, "w");
    if (!f) return LDMC_ERR(err, "%s: cannot create: %s", path, strerror(errno));
    int ok = fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) != 0) ok = 0;
    return ok ? 0 : LDMC_ERR(err, "%s: cannot write: %s", path, strerror(errno));
}

// The tables of a checkpoint's models: the trained model's, then the extra ones'.
static const ldmc_params *table(const ldmc_checkpoint_model *m, int k) {
    return k ? m->extra[k - 1]->params : m->model->params;
}

// adam_m.<key>, adam_v.<key>: flat f32 vectors in table order, the tables one after another; of
// the parameters this rank owns (all of them without ZeRO).
static int save_optimizer(const char *path, const ldmc_checkpoint_model *m, ldmc_err *err) {
    int total = 0;
    for (int k = 0; k <= m->n_extra; k++)
        total += table(m, k)->count;
    ldmc_st_entry *e = calloc((size_t)(2 * total + 1), sizeof *e);
    char *names = calloc((size_t)(2 * total + 1), 512);
    if (!e || !names) {
        free(e);
        free(names);
        return LDMC_ERR(err, "out of memory");
    }
    int n = 0;
    for (int r = 0; r < 2; r++)
        for (int k = 0; k <= m->n_extra; k++) {
            const ldmc_params *p = table(m, k);
            for (int i = 0; i < p->count; i++) {
                if (!ldmc_params_owns(p, i)) continue;
                char *name = names + (size_t)n * 512;
                snprintf(name, 512, "%s.%s", r ? "adam_v" : "adam_m", p->items[i].name);
                e[n] = (ldmc_st_entry){.name = name,
                                       .dtype = LDMC_F32,
                                       .src_dtype = LDMC_F32,
                                       .ndim = 1,
                                       .shape = {p->items[i].numel},
                                       .data = p->buffers[r ? LDMC_ROLE_ADAM_V : LDMC_ROLE_ADAM_M] +
                                               p->items[i].offset};
                n++;
            }
        }
    int rc = ldmc_safetensors_write(path, e, n, NULL, 0, err);
    free(e);
    free(names);
    return rc;
}

// The optimizer file `index` of `count` in dir: optimizer.safetensors alone, or a rank's.
static void optimizer_path(char *path, size_t size, const char *dir, int index, int count) {
    if (count == 1)
        snprintf(path, size, "%s/optimizer.safetensors", dir);
    else
        snprintf(path, size, "%s/optimizer-%05d-of-%05d.safetensors", dir, index, count);
}

// m and v of every parameter this rank owns, from whichever of the files holds it.
static int load_optimizer(const ldmc_safetensors *files, int n_files, ldmc_params *p,
                          ldmc_err *err) {
    int rc = 0;
    for (int r = 0; r < 2 && rc == 0; r++)
        for (int i = 0; i < p->count && rc == 0; i++) {
            if (!ldmc_params_owns(p, i)) continue;
            char name[512];
            snprintf(name, sizeof name, "%s.%s", r ? "adam_v" : "adam_m", p->items[i].name);
            const ldmc_safetensors *st = NULL;
            const ldmc_st_tensor *t = NULL;
            for (int f = 0; f < n_files && !t; f++)
                t = ldmc_safetensors_find(st = &files[f], name);
            if (!t || t->dtype != LDMC_F32 || ldmc_st_numel(t) != p->items[i].numel)
                rc = LDMC_ERR(err, "%s: '%s' is missing or has the wrong size for this model",
                              n_files == 1 ? files[0].path : "the optimizer files", name);
            else
                rc = ldmc_safetensors_read(
                    st, t, p->buffers[r ? LDMC_ROLE_ADAM_V : LDMC_ROLE_ADAM_M] + p->items[i].offset,
                    LDMC_F32, err);
        }
    return rc;
}

static int step_of(const char *name) {
    int step = -1, n = 0;
    if (sscanf(name, "step-%d%n", &step, &n) == 1 && name[n] == '\0') return step;
    return -1;
}

static int compare_steps(const void *a, const void *b) {
    return step_of(*(char *const *)a) - step_of(*(char *const *)b);
}

// The complete checkpoint directories, oldest first.
static int list_checkpoints(const char *root, char ***names) {
    DIR *d = opendir(root);
    *names = NULL;
    if (!d) return 0;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (step_of(e->d_name) < 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            *names = realloc(*names, (size_t)cap * sizeof **names);
        }
        (*names)[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(*names, (size_t)n, sizeof **names, compare_steps);
    return n;
}

int ldmc_checkpoint_clean(const char *out_dir) {
    char root[4096], path[4200];
    snprintf(root, sizeof root, "%s/checkpoints", out_dir);
    DIR *d = opendir(root);
    if (!d) return 0;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len > 4 && !strcmp(e->d_name + len - 4, ".tmp")) {
            snprintf(path, sizeof path, "%s/%s", root, e->d_name);
            removed += ldmc_remove_tree(path) == 0;
        }
    }
    closedir(d);
    return removed;
}

int ldmc_checkpoint_save(const char *out_dir, const ldmc_checkpoint_model *m,
                         const ldmc_train_state *st, const char *config_yaml, int keep,
                         char *saved_path, ldmc_err *err) {
    char root[4000], final[4100], tmp[4200], file[4400];
    const ldmc_dist *d = ldmc_dist_get();
    const bool lead = d->rank == 0, shards = m->zero && d->world > 1;
    snprintf(root, sizeof root, "%s/checkpoints", out_dir);
    snprintf(final, sizeof final, "%s/step-%08lld", root, (long long)st->step);
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    int rc = 0;
    if (lead && ldmc_mkdirs(root, err) != 0) rc = -1;
    if (lead && rc == 0) {
        ldmc_remove_tree(tmp);
        if (mkdir(tmp, 0777) != 0)
            rc = LDMC_ERR(err, "%s: cannot create: %s", tmp, strerror(errno));
    }
    if (ldmc_dist_agree(rc, tmp, err) != 0) return -1;
    ldmc_save_part weights[3], ema[3];
    int n_models = 1 + m->n_extra;
    for (int k = 0; k < n_models; k++) {
        ldmc_key_map map = {.layout = LDMC_LAYOUT_OFFICIAL,
                            .model = k ? m->extra[k - 1] : m->model};
        weights[k] = (ldmc_save_part){map, LDMC_ROLE_WEIGHTS, NULL};
        ema[k] = (ldmc_save_part){map, LDMC_ROLE_EMA, m->ema_full[k]};
    }
    if (lead) {
        snprintf(file, sizeof file, "%s/model.safetensors", tmp);
        rc = ldmc_save_weights(file, weights, n_models, LDMC_F32, NULL, err);
        maybe_die("model", st->step);
        if (rc == 0 && m->ema) {
            snprintf(file, sizeof file, "%s/ema.safetensors", tmp);
            rc = ldmc_save_weights(file, ema, n_models, LDMC_F32, NULL, err);
        }
    }
    if (rc == 0 && (lead || shards)) {
        optimizer_path(file, sizeof file, tmp, d->rank, shards ? d->world : 1);
        rc = save_optimizer(file, m, err);
        maybe_die("optimizer", st->step);
    }
    if (ldmc_dist_agree(rc, tmp, err) != 0) return -1;
    if (!lead) return ldmc_dist_agree(0, final, err); // rank 0 finishes: state, rename, pruning
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", (double)st->step);
    cJSON_AddNumberToObject(j, "batches", (double)st->batches);
    cJSON_AddNumberToObject(j, "skipped_steps", (double)st->skipped_steps);
    cJSON_AddNumberToObject(j, "images", (double)st->images);
    char seed[32], fingerprint[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)st->seed);
    cJSON_AddStringToObject(j, "seed", seed); // a string: 64-bit seeds do not fit a double
    cJSON_AddNumberToObject(j, "data_samples", (double)st->data_samples);
    snprintf(fingerprint, sizeof fingerprint, "%016llx", (unsigned long long)st->data_fingerprint);
    cJSON_AddStringToObject(j, "data_fingerprint", fingerprint);
    cJSON_AddBoolToObject(j, "ema", m->ema);
    cJSON_AddNumberToObject(j, "world", d->world);
    cJSON_AddNumberToObject(j, "global_batch", (double)st->global_batch);
    cJSON_AddNumberToObject(j, "optimizer_files", shards ? d->world : 1);
    // Every random draw is Philox keyed by (seed, step, rank, purpose): the seed and the step are
    // the whole generator state; the data position is the batch count.
    cJSON_AddStringToObject(j, "rng", "philox4x32-10 keyed by (seed, step, rank, purpose)");
    cJSON_AddStringToObject(j, "format", LDMC_STATE_FORMAT);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    snprintf(file, sizeof file, "%s/state.json", tmp);
    rc = text ? write_text(file, text, err) : LDMC_ERR(err, "out of memory");
    free(text);
    snprintf(file, sizeof file, "%s/config.yaml", tmp);
    if (rc == 0) rc = write_text(file, config_yaml ? config_yaml : "", err);
    if (rc == 0) maybe_die("before-rename", st->step);
    if (rc == 0 && fsync_path(tmp) != 0)
        rc = LDMC_ERR(err, "%s: cannot sync: %s", tmp, strerror(errno));
    if (rc == 0) {
        ldmc_remove_tree(final); // a run that rewrites a step it already saved
        if (rename(tmp, final) != 0)
            rc = LDMC_ERR(err, "%s: cannot rename into place: %s", final, strerror(errno));
    }
    if (ldmc_dist_agree(rc, final, err) != 0) return -1;
    fsync_path(root);
    maybe_die("saved", st->step);
    if (saved_path) snprintf(saved_path, 4200, "%s", final);
    char **names;
    int n = list_checkpoints(root, &names);
    for (int i = 0; i < n; i++) {
        if (i < n - keep) {
            snprintf(file, sizeof file, "%s/%s", root, names[i]);
            ldmc_remove_tree(file);
        }
        free(names[i]);
    }
    free(names);
    return 0;
}

int ldmc_checkpoint_latest(const char *out_dir, char *path, size_t size, ldmc_err *err) {
    char root[4096];
    snprintf(root, sizeof root, "%s/checkpoints", out_dir);
    char **names;
    int n = list_checkpoints(root, &names);
    if (n == 0) {
        free(names);
        return LDMC_ERR(err, "%s: no checkpoint to resume from", root);
    }
    snprintf(path, size, "%s/%s", root, names[n - 1]);
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return 0;
}

// A whole number in [min, max] under `key` (JSON numbers are doubles: exact up to 2^53).
static int state_count(const cJSON *j, const char *key, bool required, int64_t min, int64_t max,
                       int64_t *out, const char *file, ldmc_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v && !required) return 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!v || !isfinite(d) || d != floor(d) || d < (double)min || d > (double)max) {
        char *text = v ? cJSON_PrintUnformatted(v) : NULL;
        LDMC_ERR(err, "%s: \"%s\" must be a whole number from %lld to %lld, %s%s", file, key,
                 (long long)min, (long long)max, text ? "got " : "it is missing", text ? text : "");
        free(text);
        return -1;
    }
    *out = (int64_t)d;
    return 0;
}

// A string of 1..20 hexadecimal (base 16) or decimal (base 10) digits that fits 64 bits.
static int state_u64(const cJSON *j, const char *key, bool required, int base, uint64_t *out,
                     const char *file, ldmc_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v && !required) return 0;
    const char *s = cJSON_IsString(v) ? v->valuestring : "";
    size_t n = strlen(s);
    bool ok =
        n > 0 && n <= 20 && strspn(s, base == 16 ? "0123456789abcdefABCDEF" : "0123456789") == n;
    errno = 0;
    unsigned long long value = ok ? strtoull(s, NULL, base) : 0;
    if (!ok || errno == ERANGE)
        return LDMC_ERR(err, "%s: \"%s\" must be a string of %s digits (64 bits), %s", file, key,
                        base == 16 ? "hexadecimal" : "decimal",
                        v ? "got something else" : "it is missing");
    *out = (uint64_t)value;
    return 0;
}

// Reads and checks every field of state.json.
static int read_state_json(const char *dir, ldmc_train_state *st, bool *has_ema, ldmc_err *err) {
    char file[4200];
    snprintf(file, sizeof file, "%s/state.json", dir);
    FILE *f = fopen(file, "r");
    if (!f)
        return LDMC_ERR(err, "%s: cannot open: %s (not a checkpoint directory?)", file,
                        strerror(errno));
    enum { MAX_STATE = 1 << 16 };
    char *text = malloc(MAX_STATE + 1);
    size_t n = text ? fread(text, 1, MAX_STATE + 1, f) : 0;
    fclose(f);
    if (!text) return LDMC_ERR(err, "out of memory");
    if (n > MAX_STATE) {
        free(text);
        return LDMC_ERR(err, "%s: larger than %d bytes: not a training state", file, MAX_STATE);
    }
    text[n] = '\0';
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return LDMC_ERR(
            err, "%s: not a JSON object (expected {\"step\", \"batches\", \"seed\", ...})", file);
    }
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(j, "format");
    const cJSON *ema = cJSON_GetObjectItemCaseSensitive(j, "ema");
    *st = (ldmc_train_state){.world = 1, .optimizer_files = 1};
    int rc = 0;
    if (!cJSON_IsString(format) || strcmp(format->valuestring, LDMC_STATE_FORMAT) != 0)
        rc = LDMC_ERR(err, "%s: \"format\" must be \"%s\"", file, LDMC_STATE_FORMAT);
    else if (ema && !cJSON_IsBool(ema))
        rc = LDMC_ERR(err, "%s: \"ema\" must be true or false", file);
    const int64_t exact = (int64_t)1 << 53;
    if (rc == 0)
        rc = state_count(j, "step", true, 0, LDMC_MAX_STEPS, &st->step, file, err) ||
                     state_count(j, "batches", true, st->step, exact, &st->batches, file, err) ||
                     state_count(j, "skipped_steps", false, 0, st->step, &st->skipped_steps, file,
                                 err) ||
                     state_count(j, "images", false, 0, exact, &st->images, file, err) ||
                     state_count(j, "data_samples", false, 0, INT32_MAX, &st->data_samples, file,
                                 err) ||
                     state_count(j, "world", false, 1, INT32_MAX, &st->world, file, err) ||
                     state_count(j, "global_batch", false, 0, INT32_MAX, &st->global_batch, file,
                                 err) ||
                     state_count(j, "optimizer_files", false, 1, INT32_MAX, &st->optimizer_files,
                                 file, err) ||
                     state_u64(j, "seed", true, 10, &st->seed, file, err) ||
                     state_u64(j, "data_fingerprint", false, 16, &st->data_fingerprint, file, err)
                 ? -1
                 : 0;
    *has_ema = cJSON_IsTrue(ema);
    cJSON_Delete(j);
    return rc;
}

int ldmc_checkpoint_load(const char *dir, ldmc_checkpoint_model *m, ldmc_train_state *st,
                         ldmc_err *err) {
    char file[4200];
    bool has_ema = false;
    if (read_state_json(dir, st, &has_ema, err) != 0) return -1;
    if (m->ema && !has_ema)
        return LDMC_ERR(err, "%s: the run has EMA on but the checkpoint has no EMA weights", dir);
    int rc = 0;
    for (int pass = 0; pass < 1 + m->ema && rc == 0; pass++) {
        ldmc_safetensors sf;
        snprintf(file, sizeof file, "%s/%s.safetensors", dir, pass ? "ema" : "model");
        if (ldmc_safetensors_open(&sf, file, err) != 0) return -1;
        ldmc_load_options opt = {.role = pass ? LDMC_ROLE_EMA : LDMC_ROLE_WEIGHTS};
        // one model: every tensor of the file is its; several: each owns its prefix, and the
        // file holds nothing else
        int used = 0;
        for (int k = 0; k <= m->n_extra && rc == 0; k++) {
            const ldmc_model *model = k ? m->extra[k - 1] : m->model;
            ldmc_key_map map = {.layout = LDMC_LAYOUT_OFFICIAL, .model = model};
            rc = ldmc_load_weights(&sf, &map, m->n_extra ? model->desc->prefix : "", &opt, err);
            used += model->params->count;
        }
        if (rc == 0 && sf.count != used)
            rc = LDMC_ERR(err, "%s: %d tensors, the run's models have %d", file, sf.count, used);
        ldmc_safetensors_close(&sf);
    }
    int n_files = (int)st->optimizer_files, opened = 0;
    ldmc_safetensors *files = calloc((size_t)n_files, sizeof *files);
    if (!files) return LDMC_ERR(err, "out of memory");
    for (; opened < n_files && rc == 0; opened++) {
        optimizer_path(file, sizeof file, dir, opened, n_files);
        if (ldmc_safetensors_open(&files[opened], file, err) != 0) break;
    }
    if (opened < n_files) rc = -1;
    for (int k = 0; k <= m->n_extra && rc == 0; k++)
        rc = load_optimizer(files, n_files, (ldmc_params *)table(m, k), err);
    for (int f = 0; f < opened; f++)
        ldmc_safetensors_close(&files[f]);
    free(files);
    return rc;
}
