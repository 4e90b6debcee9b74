// `ldmc eval stats|fid|is|run`: FID and Inception Score (src/eval/fid.h) of image folders and
// statistics files, and an evaluation run that samples a model (`ldmc sample`) and scores it.
// Tested by tests/test_cli.sh (and the parts by tests/test_eval.c).
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "eval/fid.h"
#include "eval/sample.h"
#include "io/files.h"
#include "train/dist.h"

static const char *usage_text =
    "usage: ldmc eval stats INPUT OUT.npz   [options]  the FID statistics (mu, sigma) of a folder\n"
    "       ldmc eval fid A B               [options]  FID between two folders or .npz files\n"
    "       ldmc eval is DIR [--splits N] [--no-shuffle] [options]  the Inception Score\n"
    "       ldmc eval run CONFIG --images N --ref STATS.npz --out DIR [options]\n"
    "                 [ldmc sample's options]  samples N images, then their FID and IS\n"
    "options:\n"
    "  --inception PTH   the FID Inception's weights: pytorch-fid's\n"
    "                    pt_inception-2015-12-05-6726825d.pth (or $LDMC_INCEPTION)\n"
    "  --mode pytorch-fid|torch-fidelity   the resize to 299 and scaling (pytorch-fid)\n"
    "  --batch B         images per Inception forward (8)\n"
    "  --splits N        IS splits (10); --no-shuffle: OpenAI's sequential splits instead of\n"
    "                    torch-fidelity's shuffled ones\n"
    "run: class-conditional models sample every class equally (N a multiple of the classes),\n"
    "  text models the prompts of --prompts FILE; --shard R/W samples only a shard (score the\n"
    "  folder with `ldmc eval fid DIR STATS.npz` once every shard is done); under mpirun or\n"
    "  srun the ranks share the sampling and rank 0 scores\n";

typedef struct eval_args {
    const char *inception, *mode;
    int batch, splits;
    bool shuffle;
} eval_args;

static int load_inception(const eval_args *a, ldmc_inception *net) {
    const char *path = a->inception ? a->inception : getenv("LDMC_INCEPTION");
    if (!path) {
        fprintf(stderr, "ldmc eval: the FID Inception's weights are needed: --inception "
                        "pt_inception-2015-12-05-6726825d.pth (pytorch-fid's release fid_weights; "
                        "docs/evaluation.md)\n");
        return 2;
    }
    ldmc_err err = {0};
    if (ldmc_inception_load_file(net, path, &err) != 0) {
        fprintf(stderr, "ldmc eval: %s\n", err.message);
        return 1;
    }
    return 0;
}

static ldmc_fid_options fid_options(const eval_args *a) {
    return (ldmc_fid_options){
        .mode = a->mode && !strcmp(a->mode, "torch-fidelity") ? LDMC_FID_TF : LDMC_FID_PYTORCH,
        .batch = a->batch};
}

// The features of a folder (the skipped images named and counted).
static int folder_features(ldmc_ctx *ctx, const ldmc_inception *net, const eval_args *a,
                           const char *dir, ldmc_fid_features *f) {
    ldmc_err err = {0};
    int skipped = 0;
    ldmc_fid_options o = fid_options(a);
    if (ldmc_fid_folder_features(ctx, net, dir, &o, f, &skipped, &err) != 0) {
        fprintf(stderr, "ldmc eval: %s\n", err.message);
        return 1;
    }
    printf("%s: %d images%s", dir, f->n, skipped ? "" : "\n");
    if (skipped) printf(", %d left out (named above)\n", skipped);
    return 0;
}

// Statistics of a folder or an .npz.
static int stats_of(ldmc_ctx *ctx, const ldmc_inception *net, const eval_args *a, const char *input,
                    ldmc_fid_stats *s) {
    ldmc_err err = {0};
    *s = (ldmc_fid_stats){0};
    if (!ldmc_is_dir(input)) {
        if (ldmc_fid_stats_read(input, s, &err) == 0) return 0;
        fprintf(stderr, "ldmc eval: %s\n", err.message);
        return 1;
    }
    ldmc_fid_features f;
    int rc = folder_features(ctx, net, a, input, &f);
    if (rc == 0 && ldmc_fid_stats_compute(f.pool3, f.n, LDMC_INCEPTION_FEATURES, s, &err) != 0) {
        fprintf(stderr, "ldmc eval: %s: %s\n", input, err.message);
        rc = 1;
    }
    if (rc == 0 && f.n <= LDMC_INCEPTION_FEATURES)
        printf("note: %d images <= 2048 features: the covariance is singular; the distance is "
               "defined but biased (pytorch-fid recommends 10k images or more)\n",
               f.n);
    ldmc_fid_features_free(&f);
    return rc;
}

static int run_fid(ldmc_ctx *ctx, const ldmc_inception *net, const eval_args *a, const char *x,
                   const char *y, double *fid) {
    ldmc_fid_stats sx, sy;
    if (stats_of(ctx, net, a, x, &sx) != 0) return 1;
    if (stats_of(ctx, net, a, y, &sy) != 0) {
        ldmc_fid_stats_free(&sx);
        return 1;
    }
    ldmc_err err = {0};
    int rc = ldmc_fid_distance(&sx, &sy, fid, &err);
    if (rc != 0) fprintf(stderr, "ldmc eval: %s\n", err.message);
    ldmc_fid_stats_free(&sx);
    ldmc_fid_stats_free(&sy);
    return rc == 0 ? 0 : 1;
}

static int run_is(ldmc_ctx *ctx, const ldmc_inception *net, const eval_args *a, const char *dir,
                  double *mean, double *std) {
    ldmc_fid_features f;
    if (folder_features(ctx, net, a, dir, &f) != 0) return 1;
    ldmc_err err = {0};
    int rc = ldmc_inception_score(f.logits, f.n, LDMC_INCEPTION_CLASSES, a->splits, a->shuffle,
                                  mean, std, &err);
    if (rc != 0) fprintf(stderr, "ldmc eval: %s\n", err.message);
    ldmc_fid_features_free(&f);
    return rc == 0 ? 0 : 1;
}

// `eval run`: ldmc sample's command line with --class 0..K-1 and --n N/K (class models) or
// --n N/P (the prompts), then FID against --ref and IS of the folder.
static int eval_run(int argc, char **argv, const eval_args *a, ldmc_ctx *ctx,
                    const ldmc_inception *net) {
    const char *config = NULL, *ref = NULL, *out = NULL, *prompts = NULL, *shard = NULL;
    int images = 0;
    char **pass = calloc((size_t)argc + 8, sizeof *pass);
    int n_pass = 0;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        // ldmc sample's options without a value; every other option takes the next argument
        bool flag = !strcmp(o, "--no-grid") || !strcmp(o, "--quiet");
        if (!strcmp(o, "--images") && v) {
            images = atoi(v), i++;
        } else if (!strcmp(o, "--ref") && v) {
            ref = v, i++;
        } else if (o[0] != '-' && !config) {
            config = o;
        } else if (!strcmp(o, "--class") || !strcmp(o, "--n") || !strcmp(o, "--prompt")) {
            fprintf(stderr, "ldmc eval run: %s: the run chooses the classes and counts\n", o);
            free(pass);
            return 2;
        } else {
            if (!strcmp(o, "--out") && v) out = v;
            if (!strcmp(o, "--prompts") && v) prompts = v;
            if (!strcmp(o, "--shard") && v) shard = v;
            pass[n_pass++] = argv[i];
            if (o[0] == '-' && !flag && v) pass[n_pass++] = argv[++i];
        }
    }
    if (!config || !ref || !out || images < 2) {
        fprintf(stderr, "ldmc eval run: needs CONFIG, --images N (>= 2), --ref STATS and --out\n%s",
                usage_text);
        free(pass);
        return 2;
    }
    // what would fail after the sampling, checked before it: the reference, the splits, a folder
    // whose other images the score would take in
    ldmc_err err = {0};
    if (!ldmc_is_dir(ref)) {
        ldmc_fid_stats probe_ref;
        if (ldmc_fid_stats_read(ref, &probe_ref, &err) != 0) {
            fprintf(stderr, "ldmc eval run: %s\n", err.message);
            free(pass);
            return 1;
        }
        ldmc_fid_stats_free(&probe_ref);
    }
    if (images < a->splits) {
        fprintf(stderr, "ldmc eval run: %d images in %d IS splits\n", images, a->splits);
        free(pass);
        return 2;
    }
    DIR *d = opendir(out);
    int entries = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        entries += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d) closedir(d);
    if (entries && !(shard && strcmp(shard, "0/1"))) {
        fprintf(stderr,
                "ldmc eval run: %s is not empty: the score would take in every image there "
                "(give a new --out)\n",
                out);
        free(pass);
        return 2;
    }
    // how many rows: the model's classes, or the prompts file's lines (loaded to count them)
    ldmc_sample_model probe;
    ldmc_sample_model_options po = {0};
    for (int i = 0; i + 1 < n_pass; i++) {
        if (!strcmp(pass[i], "--weights")) po.weights = pass[i + 1];
        if (!strcmp(pass[i], "--vocab")) po.vocab = pass[i + 1];
    }
    if (ldmc_sample_model_load(&probe, config, &po, &err) != 0) {
        fprintf(stderr, "ldmc eval run: %s\n", err.message);
        ldmc_sample_model_free(&probe);
        free(pass);
        return 1;
    }
    int classes = probe.unet.cfg.n_classes;
    ldmc_sample_model_free(&probe);
    int rows = 1;
    if (classes) {
        rows = classes;
    } else if (prompts) {
        FILE *f = fopen(prompts, "r");
        char line[8192];
        rows = 0;
        while (f && fgets(line, sizeof line, f)) // as ldmc sample reads them: blank lines skipped
            rows += strcspn(line, "\r\n") > 0;
        if (f) fclose(f);
        if (rows == 0) rows = 1; // ldmc sample names the problem
    }
    if (images % rows) {
        fprintf(stderr, "ldmc eval run: --images %d is not a multiple of the %d %s\n", images, rows,
                classes ? "classes" : "prompts");
        free(pass);
        return 2;
    }
    char class_list[16384] = "", per[32];
    for (int c = 0; c < classes && strlen(class_list) + 8 < sizeof class_list; c++)
        snprintf(class_list + strlen(class_list), sizeof class_list - strlen(class_list), "%s%d",
                 c ? "," : "", c);
    if (classes && strlen(class_list) + 8 >= sizeof class_list) {
        fprintf(stderr, "ldmc eval run: %d classes is more than the run can list\n", classes);
        free(pass);
        return 2;
    }
    snprintf(per, sizeof per, "%d", images / rows);
    // under mpirun or srun: every rank has looked at the folder before any writes to it, then
    // samples its shard (ldmc sample takes rank/world), and rank 0 scores them all
    if (ldmc_dist_init(&err) != 0) {
        fprintf(stderr, "ldmc eval run: %s\n", err.message);
        free(pass);
        return 1;
    }
    const bool ranks = ldmc_dist_get()->world > 1 && !shard;
    ldmc_dist_barrier();
    char **sargv = calloc((size_t)n_pass + 8, sizeof *sargv);
    int sn = 0;
    sargv[sn++] = (char *)config;
    if (classes) sargv[sn++] = "--class", sargv[sn++] = class_list;
    sargv[sn++] = "--n", sargv[sn++] = per;
    sargv[sn++] = "--no-grid";
    for (int i = 0; i < n_pass; i++)
        sargv[sn++] = pass[i];
    int rc = ldmc_cmd_sample(sn, sargv);
    free(sargv), free(pass);
    if (ranks && ldmc_dist_agree(rc, "sampling", &err) != 0) {
        if (rc == 0) fprintf(stderr, "ldmc eval run: %s\n", err.message);
        return rc ? rc : 1;
    }
    if (rc != 0) return rc;
    if (ranks && ldmc_dist_get()->rank > 0) return 0; // rank 0 scores the folder
    if (shard && strcmp(shard, "0/1")) {
        printf("shard %s sampled; once every shard is done: ldmc eval fid %s %s\n", shard, out,
               ref);
        return 0;
    }
    double fid, mean, std;
    if (run_fid(ctx, net, a, out, ref, &fid) != 0) return 1;
    if (run_is(ctx, net, a, out, &mean, &std) != 0) return 1;
    printf("FID %.4f against %s (%d images); IS %.4f ± %.4f (%d splits%s)\n", fid, ref, images,
           mean, std, a->splits, a->shuffle ? ", torch-fidelity's shuffle" : "");
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.json", out);
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f,
                      "{\"fid\": %.10g, \"is_mean\": %.10g, \"is_std\": %.10g, \"images\": %d, "
                      "\"ref\": \"%s\", \"mode\": \"%s\", \"splits\": %d, \"shuffle\": %s}\n",
                      fid, mean, std, images, ref, a->mode ? a->mode : "pytorch-fid", a->splits,
                      a->shuffle ? "true" : "false") < 0) {
        fprintf(stderr, "ldmc eval run: cannot write %s\n", path);
        if (f) fclose(f);
        return 1;
    }
    fclose(f);
    return 0;
}

int ldmc_cmd_eval(int argc, char **argv) {
    if (argc < 1 || !strcmp(argv[0], "-h") || !strcmp(argv[0], "--help")) {
        fputs(usage_text, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    const char *sub = argv[0];
    eval_args a = {.batch = 8, .splits = 10, .shuffle = true};
    const char *pos[2] = {NULL, NULL};
    int n_pos = 0;
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    int n_rest = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--inception") && v)
            a.inception = v, i++;
        else if (!strcmp(argv[i], "--mode") && v)
            a.mode = v, i++;
        else if (!strcmp(argv[i], "--batch") && v && strcmp(sub, "run"))
            a.batch = atoi(v), i++;
        else if (!strcmp(argv[i], "--splits") && v)
            a.splits = atoi(v), i++;
        else if (!strcmp(argv[i], "--no-shuffle"))
            a.shuffle = false;
        else if (!strcmp(sub, "run"))
            rest[n_rest++] = argv[i];
        else if (argv[i][0] != '-' && n_pos < 2)
            pos[n_pos++] = argv[i];
        else {
            fprintf(stderr, "ldmc eval %s: unexpected argument '%s'\n%s", sub, argv[i], usage_text);
            free(rest);
            return 2;
        }
    }
    int want = !strcmp(sub, "is") ? 1 : !strcmp(sub, "run") ? 0 : 2;
    bool known =
        !strcmp(sub, "stats") || !strcmp(sub, "fid") || !strcmp(sub, "is") || !strcmp(sub, "run");
    if (!known || n_pos != want || a.batch < 1 || a.splits < 1 ||
        (a.mode && strcmp(a.mode, "pytorch-fid") && strcmp(a.mode, "torch-fidelity"))) {
        fprintf(stderr, "ldmc eval: %s\n%s", known ? "bad arguments" : "unknown subcommand",
                usage_text);
        free(rest);
        return 2;
    }
    // `fid` of two statistics files needs no network
    bool need_net = !(!strcmp(sub, "fid") && !ldmc_is_dir(pos[0]) && !ldmc_is_dir(pos[1]));
    ldmc_inception net = {0};
    int rc = need_net ? load_inception(&a, &net) : 0;
    ldmc_ctx ctx;
    ldmc_ctx_init(&ctx, (size_t)64 << 30, (size_t)1 << 30); // address space; the CPU computes
    if (rc == 0) {
        if (!strcmp(sub, "stats")) {
            ldmc_fid_stats s;
            ldmc_err err = {0};
            rc = stats_of(&ctx, &net, &a, pos[0], &s);
            if (rc == 0 && ldmc_fid_stats_write(pos[1], &s, &err) != 0) {
                fprintf(stderr, "ldmc eval: %s\n", err.message);
                rc = 1;
            }
            if (rc == 0) printf("wrote %s (mu %d, sigma %dx%d)\n", pos[1], s.d, s.d, s.d);
            ldmc_fid_stats_free(&s);
        } else if (!strcmp(sub, "fid")) {
            double fid;
            rc = run_fid(&ctx, &net, &a, pos[0], pos[1], &fid);
            if (rc == 0) printf("FID %.6f\n", fid);
        } else if (!strcmp(sub, "is")) {
            double mean, std;
            rc = run_is(&ctx, &net, &a, pos[0], &mean, &std);
            if (rc == 0)
                printf("IS %.6f ± %.6f (%d splits%s)\n", mean, std, a.splits,
                       a.shuffle ? ", torch-fidelity's shuffle" : ", sequential");
        } else {
            rc = eval_run(n_rest, rest, &a, &ctx, &net);
        }
    }
    ldmc_ctx_free(&ctx);
    ldmc_inception_free(&net);
    free(rest);
    return rc;
}
