// Scanning image folders (see dataset.h). Tested by tests/test_data.c.
#include "data/dataset.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/rng.h"
#include "data/image.h"

static bool is_image_name(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot &&
           (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png"));
}

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

typedef struct string_list {
    char **items;
    int count, cap;
} string_list;

static int push(string_list *l, char *s) {
    if (!s) return -1;
    if (l->count == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        char **items = realloc(l->items, (size_t)l->cap * sizeof *items);
        if (!items) return -1;
        l->items = items;
    }
    l->items[l->count++] = s;
    return 0;
}

static void free_list(string_list *l) {
    for (int i = 0; i < l->count; i++)
        free(l->items[i]);
    free(l->items);
}

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", a, b);
    return s;
}

static bool is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

// Image files under dir (recursively when `recurse`), appended to `out` (sorted later).
static int list_images(const char *dir, bool recurse, string_list *out, int depth, ldmc_err *err) {
    DIR *d = opendir(dir);
    if (!d) return LDMC_ERR(err, "%s: cannot open the folder: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *path = join(dir, e->d_name);
        if (!path) {
            rc = LDMC_ERR(err, "out of memory");
        } else if (is_dir(path)) {
            if (recurse && depth < 16) rc = list_images(path, true, out, depth + 1, err);
            free(path);
        } else if (is_image_name(e->d_name)) {
            if (push(out, path) != 0) rc = LDMC_ERR(err, "out of memory");
        } else {
            free(path);
        }
    }
    closedir(d);
    return rc;
}

int ldmc_dataset_keep_min_size(ldmc_dataset *d, int min_side) {
    int kept = 0;
    for (int i = 0; i < d->count; i++) {
        ldmc_sample *s = &d->items[i];
        if (s->original_height >= min_side && s->original_width >= min_side) {
            d->items[kept++] = *s;
        } else {
            free(s->path);
            free(s->caption);
        }
    }
    int removed = d->count - kept;
    d->count = kept;
    return removed;
}

// Records a file passed over at scan time (the first LDMC_SKIP_NAMED with their reason).
static void note_skip(ldmc_dataset *d, const char *reason) {
    if (d->skipped < LDMC_SKIP_NAMED) d->skip_reasons[d->skipped] = strdup(reason);
    d->skipped++;
}

void ldmc_dataset_report(const ldmc_dataset *d, FILE *out) {
    fprintf(out, "data: %d images in %s", d->count, d->root);
    if (d->n_classes) fprintf(out, ", %d classes", d->n_classes);
    fprintf(out, ", %d files skipped\n", d->skipped);
    for (int i = 0; i < d->skipped && i < LDMC_SKIP_NAMED; i++)
        fprintf(out, "  skipped: %s\n", d->skip_reasons[i]);
    if (d->skipped > LDMC_SKIP_NAMED)
        fprintf(out, "  (and %d more)\n", d->skipped - LDMC_SKIP_NAMED);
}

static char *read_caption(const char *image_path) {
    const char *dot = strrchr(image_path, '.');
    size_t stem = (size_t)(dot - image_path);
    char *txt = malloc(stem + 5);
    if (!txt) return NULL;
    memcpy(txt, image_path, stem);
    memcpy(txt + stem, ".txt", 5);
    FILE *f = fopen(txt, "r");
    free(txt);
    if (!f) return NULL;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    return strdup(buf);
}

// Probes the file and, when it is an image, adds a sample.
static int add_sample(ldmc_dataset *d, int *cap, const char *path, int class_id, char *caption,
                      int orig_h, int orig_w, const float *aesthetic) {
    ldmc_err err = {0};
    int w, h;
    if (ldmc_image_probe(path, &w, &h, &err) != 0) {
        note_skip(d, err.message);
        free(caption);
        return 0;
    }
    if (d->count == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        ldmc_sample *items = realloc(d->items, (size_t)*cap * sizeof *items);
        if (!items) return -1;
        d->items = items;
    }
    d->items[d->count++] = (ldmc_sample){.path = strdup(path),
                                         .height = h,
                                         .width = w,
                                         .original_height = orig_h > 0 ? orig_h : h,
                                         .original_width = orig_w > 0 ? orig_w : w,
                                         .class_id = class_id,
                                         .caption = caption,
                                         .aesthetic = aesthetic ? *aesthetic : 6.0f,
                                         .has_aesthetic = aesthetic != NULL};
    return 0;
}

static int scan_metadata(ldmc_dataset *d, const char *meta_path, ldmc_err *err) {
    FILE *f = fopen(meta_path, "r");
    if (!f) return LDMC_ERR(err, "%s: cannot open: %s", meta_path, strerror(errno));
    char *line = NULL;
    size_t len = 0;
    int lineno = 0, cap = 0, max_class = -1, rc = 0;
    while (rc == 0 && getline(&line, &len, f) > 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == strlen(line)) continue;
        cJSON *j = cJSON_Parse(line);
        const cJSON *file = cJSON_GetObjectItemCaseSensitive(j, "file");
        char reason[512];
        if (!cJSON_IsString(file)) {
            snprintf(reason, sizeof reason, "%s:%d: not a JSON object with a \"file\" string",
                     meta_path, lineno);
            note_skip(d, reason);
            cJSON_Delete(j);
            continue;
        }
        const cJSON *caption = cJSON_GetObjectItemCaseSensitive(j, "caption");
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(j, "class");
        const cJSON *size = cJSON_GetObjectItemCaseSensitive(j, "original_size");
        const cJSON *score = cJSON_GetObjectItemCaseSensitive(j, "aesthetic_score");
        if (score &&
            (!cJSON_IsNumber(score) || !(score->valuedouble >= 0) || score->valuedouble > 100)) {
            snprintf(reason, sizeof reason,
                     "%s:%d: \"aesthetic_score\" must be a number from 0 to 100 (LAION's scale: "
                     "about 1 to 10)",
                     meta_path, lineno);
            note_skip(d, reason);
            cJSON_Delete(j);
            continue;
        }
        float aesthetic = score ? (float)score->valuedouble : 0.0f;
        int class_id = cJSON_IsNumber(cls) && cls->valuedouble >= 0 ? (int)cls->valuedouble : -1;
        int oh = 0, ow = 0;
        if (cJSON_IsArray(size) && cJSON_GetArraySize(size) == 2) {
            oh = (int)cJSON_GetArrayItem(size, 0)->valuedouble;
            ow = (int)cJSON_GetArrayItem(size, 1)->valuedouble;
        }
        char *path = join(d->root, file->valuestring);
        if (class_id > max_class) max_class = class_id;
        rc = path ? add_sample(d, &cap, path, class_id,
                               cJSON_IsString(caption) ? strdup(caption->valuestring) : NULL, oh,
                               ow, score ? &aesthetic : NULL)
                  : -1;
        free(path);
        cJSON_Delete(j);
        if (rc) rc = LDMC_ERR(err, "out of memory");
    }
    free(line);
    fclose(f);
    d->n_classes = max_class + 1;
    return rc;
}

// The samples of class folder `c` (or of the whole root): every image file, in name order. A
// class folder without a readable image is refused: it would be a class the model never sees.
static int scan_class(ldmc_dataset *d, ldmc_labels labels, const char *dir, int c, int *cap,
                      ldmc_err *err) {
    string_list files = {0};
    int rc = list_images(dir, labels != LDMC_LABELS_FOLDERS, &files, 0, err);
    if (files.count > 1)
        qsort(files.items, (size_t)files.count, sizeof *files.items, compare_strings);
    int before = d->count, skipped_before = d->skipped;
    for (int i = 0; rc == 0 && i < files.count; i++)
        rc = add_sample(d, cap, files.items[i], labels == LDMC_LABELS_FOLDERS ? c : -1,
                        read_caption(files.items[i]), 0, 0, NULL);
    if (rc == 0 && labels == LDMC_LABELS_FOLDERS && d->count == before) {
        if (files.count == 0)
            rc = LDMC_ERR(err,
                          "%s: class folder '%s' holds no images (.jpg, .jpeg or .png): remove "
                          "it, or add its images",
                          d->root, d->class_names[c]);
        else
            rc = LDMC_ERR(err, "%s: class folder '%s': none of its %d images is readable (%s)",
                          d->root, d->class_names[c], files.count,
                          skipped_before < LDMC_SKIP_NAMED ? d->skip_reasons[skipped_before]
                                                           : "see the skipped files");
    }
    free_list(&files);
    return rc;
}

static int scan_folders(ldmc_dataset *d, ldmc_labels labels, ldmc_err *err) {
    string_list classes = {0};
    int cap = 0, rc = 0;
    if (labels == LDMC_LABELS_FOLDERS) {
        DIR *dir = opendir(d->root);
        if (!dir) return LDMC_ERR(err, "%s: cannot open the folder: %s", d->root, strerror(errno));
        struct dirent *e;
        while (rc == 0 && (e = readdir(dir))) {
            if (e->d_name[0] == '.') continue;
            char *path = join(d->root, e->d_name);
            if (!path || (is_dir(path) && push(&classes, strdup(e->d_name)) != 0))
                rc = LDMC_ERR(err, "out of memory");
            free(path);
        }
        closedir(dir);
        if (rc == 0 && classes.count == 0)
            rc = LDMC_ERR(err, "%s: class folders expected (one subfolder per class), none found",
                          d->root);
        if (classes.count > 1)
            qsort(classes.items, (size_t)classes.count, sizeof *classes.items, compare_strings);
        d->n_classes = classes.count;
        d->class_names = classes.items; // owned by the dataset now
        for (int c = 0; rc == 0 && c < classes.count; c++) {
            char *dir_c = join(d->root, classes.items[c]);
            rc =
                dir_c ? scan_class(d, labels, dir_c, c, &cap, err) : LDMC_ERR(err, "out of memory");
            free(dir_c);
        }
    } else {
        rc = scan_class(d, labels, d->root, -1, &cap, err);
    }
    return rc;
}

int ldmc_dataset_scan(const char *root, ldmc_labels labels, ldmc_dataset *out, ldmc_err *err) {
    *out = (ldmc_dataset){.root = strdup(root)};
    if (!out->root) return LDMC_ERR(err, "out of memory");
    if (!is_dir(root)) {
        ldmc_dataset_free(out);
        return LDMC_ERR(err, "%s: not a folder of images", root);
    }
    int rc;
    if (labels == LDMC_LABELS_METADATA) {
        char *meta = join(root, "metadata.jsonl");
        rc = meta ? scan_metadata(out, meta, err) : LDMC_ERR(err, "out of memory");
        free(meta);
    } else {
        rc = scan_folders(out, labels, err);
    }
    if (rc == 0 && out->count == 0 && out->skipped == 0)
        rc = LDMC_ERR(err, "%s: no images (.jpg, .jpeg or .png files) in the folder", root);
    else if (rc == 0 && out->count == 0)
        rc = LDMC_ERR(err, "%s: no readable images (%d files skipped, e.g. %s)", root, out->skipped,
                      out->skip_reasons[0]);
    if (rc != 0) ldmc_dataset_free(out);
    return rc;
}

uint64_t ldmc_dataset_fingerprint(const ldmc_dataset *d) {
    uint64_t h = LDMC_HASH_START;
    size_t root = strlen(d->root);
    for (int i = 0; i < d->count; i++) {
        const ldmc_sample *s = &d->items[i];
        const char *rel = strncmp(s->path, d->root, root) == 0 ? s->path + root : s->path;
        int32_t numbers[5] = {s->height, s->width, s->original_height, s->original_width,
                              s->class_id};
        const char *caption = s->caption ? s->caption : "";
        h = ldmc_hash_bytes(h, rel, strlen(rel) + 1);
        h = ldmc_hash_bytes(h, numbers, sizeof numbers);
        h = ldmc_hash_bytes(h, caption, strlen(caption) + 1);
        if (s->has_aesthetic) h = ldmc_hash_bytes(h, &s->aesthetic, sizeof s->aesthetic);
    }
    return h;
}

void ldmc_dataset_free(ldmc_dataset *d) {
    for (int i = 0; i < d->count; i++) {
        free(d->items[i].path);
        free(d->items[i].caption);
    }
    free(d->items);
    for (int i = 0; d->class_names && i < d->n_classes; i++)
        free(d->class_names[i]);
    free(d->class_names);
    for (int i = 0; i < d->skipped && i < LDMC_SKIP_NAMED; i++)
        free(d->skip_reasons[i]);
    free(d->root);
    *d = (ldmc_dataset){0};
}
