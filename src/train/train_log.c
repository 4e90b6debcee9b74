// What a run reports (see trainer_parts.h): metrics.jsonl (one line per step, kept exact across
// resumes), TensorBoard scalars, the progress line with images per second, data wait and ETA,
// and at the end the loss curve of the whole run. Tested by tests/test_train.c.
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "io/files.h"
#include "train/canvas.h"
#include "train/trainer_parts.h"

double train_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void train_format_duration(double s, char *out, size_t size) {
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, size, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(out, size, "%ldm%02lds", t / 60, t % 60);
}

// Keeps the lines of metrics.jsonl up to `step` (a resumed run redoes the steps after its
// checkpoint) and opens it for appending.
static int open_metrics(train_log *log, const char *out, int64_t step, ldmc_err *err) {
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *in = fopen(path, "r");
    if (in) {
        FILE *copy = fopen(tmp, "w");
        if (!copy) {
            fclose(in);
            return LDMC_ERR(err, "%s: cannot create: %s", tmp, strerror(errno));
        }
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, in) > 0) {
            long long s = -1;
            const char *at = strstr(line, "\"step\":");
            if (at) s = strtoll(at + 7, NULL, 10);
            if (s >= 0 && s <= step) fputs(line, copy);
        }
        free(line);
        fclose(in);
        if (fclose(copy) != 0 || rename(tmp, path) != 0)
            return LDMC_ERR(err, "%s: cannot rewrite: %s", path, strerror(errno));
    }
    log->metrics = fopen(path, "a");
    if (!log->metrics) return LDMC_ERR(err, "%s: cannot open: %s", path, strerror(errno));
    return 0;
}

int train_log_open(train_log *log, const char *out, int64_t step, int64_t steps_left, bool files,
                   ldmc_err *err) {
    *log = (train_log){.first_step = step};
    log->losses = calloc((size_t)(steps_left > 0 ? steps_left : 1), sizeof *log->losses);
    if (!log->losses) return LDMC_ERR(err, "out of memory");
    if (!files) return 0;
    if (open_metrics(log, out, step, err) != 0) return -1;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/tensorboard", out);
    if (ldmc_mkdirs(dir, err) != 0 || ldmc_tensorboard_open(&log->tb, dir, err) != 0) return -1;
    log->have_tb = true;
    return 0;
}

void train_log_start(train_log *log, double waited) {
    log->t_start = log->t_window = train_now();
    log->wait_window = waited;
}

static void json_number(FILE *f, const char *key, double v) {
    if (isfinite(v))
        fprintf(f, ",\"%s\":%.9g", key, v);
    else
        fprintf(f, ",\"%s\":null", key);
}

void train_log_step(train_log *log, const ldmc_train_state *st, double loss, double lr,
                    double norm) {
    log->losses[st->step - 1 - log->first_step] = loss;
    if (isfinite(loss)) log->loss_window += loss, log->loss_window_n++;
    if (!log->metrics) return;
    fprintf(log->metrics, "{\"step\":%lld", (long long)st->step);
    json_number(log->metrics, "loss", loss);
    json_number(log->metrics, "lr", lr);
    json_number(log->metrics, "grad_norm", norm);
    fprintf(log->metrics, ",\"images\":%lld,\"skipped\":%lld}\n", (long long)st->images,
            (long long)st->skipped_steps);
    if (isfinite(loss)) ldmc_tensorboard_scalar(&log->tb, "train/loss", st->step, loss);
    ldmc_tensorboard_scalar(&log->tb, "train/lr", st->step, lr);
    ldmc_tensorboard_scalar(&log->tb, "train/grad_norm", st->step, norm);
}

void train_log_progress(train_log *log, const ldmc_train_state *st, int64_t steps, double lr,
                        double waited) {
    double t = train_now(), dt = t - log->t_window;
    double ips = dt > 0 ? log->images_window / dt : 0,
           wait = dt > 0 ? (waited - log->wait_window) / dt : 0;
    double per_step = (t - log->t_start) / (double)(st->step - log->first_step);
    char eta[32];
    train_format_duration(per_step * (double)(steps - st->step), eta, sizeof eta);
    printf("step %*lld/%lld | loss %.4f | lr %.2e | %.2f img/s | data wait %.0f%% | ETA %s\n",
           (int)snprintf(NULL, 0, "%lld", (long long)steps), (long long)st->step, (long long)steps,
           log->loss_window_n ? log->loss_window / log->loss_window_n : NAN, lr, ips, 100 * wait,
           eta);
    fflush(stdout);
    if (log->metrics) {
        fflush(log->metrics);
        ldmc_tensorboard_scalar(&log->tb, "perf/images_per_second", st->step, ips);
        ldmc_tensorboard_scalar(&log->tb, "perf/data_wait_fraction", st->step, wait);
    }
    log->t_window = t, log->wait_window = waited, log->images_window = 0, log->loss_window = 0;
    log->loss_window_n = 0;
}

int train_log_sync(train_log *log, const char *out, ldmc_err *err) {
    if (log->metrics && (fflush(log->metrics) != 0 || fsync(fileno(log->metrics)) != 0))
        return LDMC_ERR(err, "%s/metrics.jsonl: cannot write: %s", out, strerror(errno));
    return 0;
}

// Reads (step, loss) back from metrics.jsonl for the loss curve.
static int read_losses(const char *path, int64_t **steps, double **loss) {
    FILE *f = fopen(path, "r");
    *steps = NULL, *loss = NULL;
    if (!f) return 0;
    int n = 0, cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    while (getline(&line, &lcap, f) > 0) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *s = cJSON_GetObjectItem(j, "step"), *l = cJSON_GetObjectItem(j, "loss");
        if (cJSON_IsNumber(s) && (cJSON_IsNumber(l) || cJSON_IsNull(l))) {
            if (n == cap) {
                cap = cap ? 2 * cap : 1024;
                *steps = realloc(*steps, (size_t)cap * sizeof **steps);
                *loss = realloc(*loss, (size_t)cap * sizeof **loss);
            }
            (*steps)[n] = (int64_t)s->valuedouble;
            (*loss)[n] = cJSON_IsNumber(l) ? l->valuedouble : NAN;
            n++;
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    return n;
}

static void mean_of_tenths(const double *loss, int64_t n, double *first, double *last) {
    int64_t k = n / 10 > 1 ? n / 10 : 1;
    double a = 0, b = 0;
    int64_t na = 0, nb = 0;
    for (int64_t i = 0; i < k && i < n; i++)
        if (isfinite(loss[i])) a += loss[i], na++;
    for (int64_t i = n - k; i < n; i++)
        if (i >= 0 && isfinite(loss[i])) b += loss[i], nb++;
    *first = na ? a / na : NAN;
    *last = nb ? b / nb : NAN;
}

void train_log_finish(train_log *log, const char *out, const char *title, int64_t done, bool curve,
                      double *first_loss, double *last_loss) {
    if (log->metrics) fflush(log->metrics);
    mean_of_tenths(log->losses, done, first_loss, last_loss);
    if (!curve || !log->metrics) return;
    char path[4200];
    int64_t *steps;
    double *all;
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    int n = read_losses(path, &steps, &all);
    snprintf(path, sizeof path, "%s/loss_curve.png", out);
    ldmc_err err = {0};
    if (n > 1 && ldmc_loss_curve_png(path, steps, all, n, title, &err) == 0)
        printf("loss curve: %s\n", path);
    free(steps);
    free(all);
}

void train_log_close(train_log *log) {
    if (log->metrics) fclose(log->metrics);
    if (log->have_tb) ldmc_tensorboard_close(&log->tb);
    free(log->losses);
    *log = (train_log){0};
}
