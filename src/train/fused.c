// optim.fused_backward (see trainer_parts.h): each trained parameter's AdamW update during
// backward, once its gradient is complete (core/tape.h), with the step's learning rate and
// update count; its Σ g² kept for the logged norm. Tested by tests/test_train.c.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "ops/param_ops.h"
#include "train/optim.h"
#include "train/trainer_parts.h"

// A trained parameter's AdamW update during backward, once its gradient is complete (core/tape.h):
// Σ g² into the table's sums, and the update unless that is not finite.
static void fused_update(void *user, ldmc_params *p, int index) {
    trainer *T = user;
    ldmc_params *tables[1 + LDMC_MAX_TEXT_ENCODERS];
    int n = trainer_tables(T, tables), t = 0;
    while (t < n && tables[t] != p)
        t++;
    LDMC_CHECK(t < n && T->fused.sums[t], "an update in backward of a table not trained");
    const ldmc_train_config *cfg = T->cfg;
    double lr = T->fused.lr; // the encoders' at their learning rates, as trainer_update
    if (t > 0) lr *= cfg->adamw.lr > 0 ? cfg->text_lr[t - 1] / cfg->adamw.lr : 0;
    ldmc_adamw_coeffs c =
        ldmc_adamw_coeffs_at(&cfg->adamw, lr, T->fused.updates, p->items[index].flags);
    ldmc_params_adamw(p, index, &c, T->fused.sums[t] + index);
}

// The trained tables updated during backward, and their sums where the tables are (after
// trainer_setup_device).
void trainer_fused_setup(trainer *T) {
    ldmc_params *tables[1 + LDMC_MAX_TEXT_ENCODERS];
    int n = trainer_tables(T, tables);
    for (int t = 0; t < n; t++) {
        if (!tables[t]->update_in_backward)
            ldmc_params_update_in_backward(tables[t], fused_update, T);
        size_t bytes = (size_t)(tables[t]->count ? tables[t]->count : 1) * sizeof(double);
        if (T->fused.sums[t] && T->fused.on_device[t] == tables[t]->on_device) continue;
        if (T->fused.on_device[t])
            ldmc_gpu_free(T->fused.sums[t]);
        else
            free(T->fused.sums[t]);
        T->fused.on_device[t] = tables[t]->on_device;
        T->fused.sums[t] = tables[t]->on_device ? ldmc_gpu_malloc(bytes) : calloc(1, bytes);
        LDMC_CHECK(T->fused.sums[t], "out of memory");
    }
}

void trainer_fused_begin(trainer *T, double lr, int64_t updates) {
    if (!T->cfg->fused_backward) return;
    T->fused.lr = lr, T->fused.updates = updates;
    ldmc_params *tables[1 + LDMC_MAX_TEXT_ENCODERS];
    int n = trainer_tables(T, tables);
    for (int t = 0; t < n; t++) { // (a frozen parameter's entry stays 0)
        size_t bytes = (size_t)(tables[t]->count ? tables[t]->count : 1) * sizeof(double);
        if (T->fused.on_device[t])
            ldmc_gpu_zero(T->fused.sums[t], bytes);
        else
            memset(T->fused.sums[t], 0, bytes);
    }
}

// Σ g² of every trained gradient of the step, in table order (the same sum on every run).
double trainer_fused_sum_squares(const trainer *T) {
    ldmc_params *tables[1 + LDMC_MAX_TEXT_ENCODERS];
    int n = trainer_tables((trainer *)T, tables);
    double total = 0;
    for (int t = 0; t < n; t++) {
        int count = tables[t]->count;
        double *host = T->fused.sums[t];
        if (T->fused.on_device[t]) {
            host = malloc((size_t)(count ? count : 1) * sizeof *host);
            LDMC_CHECK(host, "out of memory");
            ldmc_gpu_download(host, T->fused.sums[t], (size_t)count * sizeof *host);
        }
        for (int i = 0; i < count; i++)
            total += host[i];
        if (host != T->fused.sums[t]) free(host);
    }
    return total;
}

void trainer_fused_free(trainer *T) {
    for (int t = 0; t < 1 + LDMC_MAX_TEXT_ENCODERS; t++) {
        if (T->fused.on_device[t])
            ldmc_gpu_free(T->fused.sums[t]);
        else
            free(T->fused.sums[t]);
        T->fused.sums[t] = NULL;
    }
}
