// Sample grids (see trainer_parts.h): the task's images laid out in labelled rows under a title,
// written as <out>/samples/step-N.png and as a TensorBoard image. Tested by tests/test_train.c.
#include <stdio.h>
#include <stdlib.h>

#include "io/files.h"
#include "train/canvas.h"
#include "train/trainer_parts.h"

static int draw(const train_grid *g, ldmc_canvas *c) {
    const int pad = 4, label_w = 8 + 6 * 2 * 10, title_h = 28;
    if (ldmc_canvas_init(c, label_w + g->cols * (g->W + pad) + pad,
                         title_h + g->rows * (g->H + pad) + pad, (ldmc_color){255, 255, 255}) != 0)
        return -1;
    ldmc_canvas_text(c, pad, 6, 2, g->title, (ldmc_color){0, 0, 0});
    for (int r = 0; r < g->rows; r++) {
        int y = title_h + pad + r * (g->H + pad);
        if (r < 16 && g->labels[r])
            ldmc_canvas_text(c, pad, y + g->H / 2 - 6, 2, g->labels[r], (ldmc_color){0, 0, 0});
        for (int k = 0; k < g->cols; k++)
            ldmc_canvas_image(c, label_w + pad + k * (g->W + pad), y,
                              g->images + ((size_t)r * g->cols + k) * g->H * g->W * 3, g->H, g->W);
    }
    return 0;
}

int train_preview(trainer *T, const ldmc_batch *last, char *path_out, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    train_grid g = {0};
    path_out[0] = '\0';
    int rc = T->task->preview(T, last, &g, err);
    if (rc != 0 || !g.images) {
        free(g.images);
        return rc;
    }
    ldmc_canvas c;
    rc = draw(&g, &c) == 0 ? 0 : LDMC_ERR(err, "out of memory");
    free(g.images);
    if (rc != 0) return -1;
    char path[4200];
    snprintf(path, sizeof path, "%s/samples", cfg->out);
    rc = ldmc_mkdirs(path, err);
    snprintf(path, sizeof path, "%s/samples/step-%08lld.png", cfg->out, (long long)T->st.step);
    if (rc == 0) rc = ldmc_canvas_write_png(&c, path, err);
    if (rc == 0 && T->log.have_tb)
        ldmc_tensorboard_image(&T->log.tb, g.tag, T->st.step, c.rgb, c.width, c.height);
    ldmc_canvas_free(&c);
    if (rc == 0) snprintf(path_out, 4200, "%s", path);
    return rc;
}
