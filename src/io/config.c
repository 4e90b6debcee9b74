// YAML configs through libyaml's document loader (see config.h). Tested by tests/test_config.c.
#include "io/config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

static ldmc_cfg *new_node(ldmc_cfg_kind kind, int line, ldmc_cfg *parent, const char *file) {
    ldmc_cfg *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->kind = kind;
    n->line = line;
    n->parent = parent;
    n->file = file;
    return n;
}

static void free_tree(ldmc_cfg *n) {
    if (!n) return;
    for (int i = 0; i < n->count; i++)
        free_tree(n->items[i]);
    free(n->items);
    free(n->key);
    free(n->value);
    free(n);
}

void ldmc_cfg_free(ldmc_cfg *root) {
    if (!root) return;
    char *file = (char *)root->file;
    free_tree(root);
    free(file);
}

static int add_item(ldmc_cfg *parent, ldmc_cfg *child) {
    ldmc_cfg **items = realloc(parent->items, (size_t)(parent->count + 1) * sizeof *items);
    if (!items) return -1;
    parent->items = items;
    parent->items[parent->count++] = child;
    return 0;
}

// Converts libyaml's node `id` of `doc` into a tree node (depth-limited against hostile input).
static ldmc_cfg *convert(yaml_document_t *doc, int id, ldmc_cfg *parent, const char *file,
                         int depth, ldmc_err *err) {
    yaml_node_t *y = yaml_document_get_node(doc, id);
    if (!y) {
        LDMC_ERR(err, "%s: malformed YAML document", file);
        return NULL;
    }
    int line = (int)y->start_mark.line + 1;
    if (depth > 32) {
        LDMC_ERR(err, "%s:%d: nested more than 32 levels deep", file, line);
        return NULL;
    }
    ldmc_cfg *n = NULL;
    if (y->type == YAML_SCALAR_NODE) {
        n = new_node(LDMC_CFG_SCALAR, line, parent, file);
        if (n) n->value = strndup((const char *)y->data.scalar.value, y->data.scalar.length);
        if (!n || !n->value) goto oom;
        return n;
    }
    if (y->type == YAML_SEQUENCE_NODE) {
        n = new_node(LDMC_CFG_LIST, line, parent, file);
        if (!n) goto oom;
        for (yaml_node_item_t *it = y->data.sequence.items.start; it < y->data.sequence.items.top;
             it++) {
            ldmc_cfg *child = convert(doc, *it, n, file, depth + 1, err);
            if (!child) goto fail;
            if (add_item(n, child) != 0) {
                free_tree(child);
                goto oom;
            }
        }
        return n;
    }
    n = new_node(LDMC_CFG_MAP, line, parent, file);
    if (!n) goto oom;
    for (yaml_node_pair_t *pair = y->data.mapping.pairs.start; pair < y->data.mapping.pairs.top;
         pair++) {
        yaml_node_t *k = yaml_document_get_node(doc, pair->key);
        if (!k || k->type != YAML_SCALAR_NODE) {
            LDMC_ERR(err, "%s:%d: map keys must be plain names", file, line);
            goto fail;
        }
        char *key = strndup((const char *)k->data.scalar.value, k->data.scalar.length);
        if (!key) goto oom;
        if (ldmc_cfg_get(n, key)) {
            LDMC_ERR(err, "%s:%d: key '%s' appears twice", file, (int)k->start_mark.line + 1, key);
            free(key);
            goto fail;
        }
        ldmc_cfg *child = convert(doc, pair->value, n, file, depth + 1, err);
        if (!child) {
            free(key);
            goto fail;
        }
        child->key = key;
        if (add_item(n, child) != 0) {
            free_tree(child);
            goto oom;
        }
    }
    return n;
oom:
    LDMC_ERR(err, "%s: out of memory", file);
fail:
    free_tree(n);
    return NULL;
}

ldmc_cfg *ldmc_cfg_parse(const char *text, const char *name, ldmc_err *err) {
    char *file = strdup(name);
    if (!file) {
        LDMC_ERR(err, "%s: out of memory", name);
        return NULL;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        free(file);
        LDMC_ERR(err, "%s: cannot start the YAML parser", name);
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    ldmc_cfg *root = NULL;
    if (!yaml_parser_load(&parser, &doc)) {
        LDMC_ERR(err, "%s:%d: invalid YAML: %s", name, (int)parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "parse error");
    } else {
        yaml_node_t *top = yaml_document_get_root_node(&doc);
        if (!top)
            LDMC_ERR(err, "%s: the file is empty", name);
        else if (top->type != YAML_MAPPING_NODE)
            LDMC_ERR(err, "%s:%d: the top level must be a map of sections", name,
                     (int)top->start_mark.line + 1);
        else
            root = convert(&doc, 1, NULL, file, 0, err);
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
    if (!root) free(file);
    return root;
}

ldmc_cfg *ldmc_cfg_load(const char *path, ldmc_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        LDMC_ERR(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *text = NULL;
    size_t size = 0, cap = 0;
    for (;;) {
        if (size + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 8192;
            if (cap > ((size_t)16 << 20)) {
                LDMC_ERR(err, "%s: larger than 16 MiB; not a config", path);
                free(text);
                fclose(f);
                return NULL;
            }
            char *grown = realloc(text, cap);
            if (!grown) {
                free(text);
                fclose(f);
                LDMC_ERR(err, "%s: out of memory", path);
                return NULL;
            }
            text = grown;
        }
        size_t got = fread(text + size, 1, 4096, f);
        size += got;
        if (got < 4096) break;
    }
    fclose(f);
    text[size] = '\0';
    if (strlen(text) != size) {
        free(text);
        LDMC_ERR(err, "%s: contains a NUL byte; not a YAML text file", path);
        return NULL;
    }
    ldmc_cfg *root = ldmc_cfg_parse(text, path, err);
    free(text);
    return root;
}

const ldmc_cfg *ldmc_cfg_get(const ldmc_cfg *map, const char *key) {
    if (!map || map->kind != LDMC_CFG_MAP) return NULL;
    for (int i = 0; i < map->count; i++)
        if (strcmp(map->items[i]->key, key) == 0) return map->items[i];
    return NULL;
}

const char *ldmc_cfg_path(const ldmc_cfg *node, char *buf, int size) {
    const ldmc_cfg *chain[64];
    int n = 0;
    for (const ldmc_cfg *c = node; c && c->parent && n < 64; c = c->parent)
        chain[n++] = c;
    int len = 0;
    buf[0] = '\0';
    for (int i = n - 1; i >= 0 && len < size; i--) {
        const ldmc_cfg *c = chain[i];
        if (c->key) {
            len += snprintf(buf + len, (size_t)(size - len), "%s%s", len ? "." : "", c->key);
        } else {
            int index = 0;
            while (index < c->parent->count && c->parent->items[index] != c)
                index++;
            len += snprintf(buf + len, (size_t)(size - len), "[%d]", index);
        }
    }
    return buf;
}

// The scalars of a tree with their paths, in document order.
typedef struct cfg_leaves {
    char (*path)[256];
    const char **value;
    int count, cap;
} cfg_leaves;

static void collect_leaves(const ldmc_cfg *n, cfg_leaves *out) {
    if (n->kind != LDMC_CFG_SCALAR) {
        for (int i = 0; i < n->count; i++)
            collect_leaves(n->items[i], out);
        return;
    }
    if (out->count == out->cap) {
        out->cap = out->cap ? 2 * out->cap : 64;
        out->path = realloc(out->path, (size_t)out->cap * sizeof *out->path);
        out->value = realloc(out->value, (size_t)out->cap * sizeof *out->value);
        LDMC_CHECK(out->path && out->value, "out of memory");
    }
    ldmc_cfg_path(n, out->path[out->count], sizeof out->path[0]);
    out->value[out->count++] = n->value ? n->value : "";
}

static int find_leaf(const cfg_leaves *l, const char *path) {
    for (int i = 0; i < l->count; i++)
        if (!strcmp(l->path[i], path)) return i;
    return -1;
}

static bool same_value(const char *a, const char *b) {
    if (!strcmp(a, b)) return true;
    char *end_a, *end_b;
    double x = strtod(a, &end_a), y = strtod(b, &end_b);
    return end_a != a && end_b != b && !*end_a && !*end_b && x == y;
}

int ldmc_cfg_diff(const ldmc_cfg *was, const ldmc_cfg *now, ldmc_cfg_diff_fn report, void *ctx) {
    cfg_leaves a = {0}, b = {0};
    collect_leaves(was, &a);
    collect_leaves(now, &b);
    int changes = 0;
    for (int i = 0; i < a.count; i++) {
        int j = find_leaf(&b, a.path[i]);
        if (j >= 0 && same_value(a.value[i], b.value[j])) continue;
        report(a.path[i], a.value[i], j >= 0 ? b.value[j] : NULL, ctx);
        changes++;
    }
    for (int j = 0; j < b.count; j++)
        if (find_leaf(&a, b.path[j]) < 0) {
            report(b.path[j], NULL, b.value[j], ctx);
            changes++;
        }
    free(a.path), free(a.value), free(b.path), free(b.value);
    return changes;
}

int ldmc_cfg_error(const ldmc_cfg *node, ldmc_err *err, const char *fmt, ...) {
    char path[256], message[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    if (node->line == 0) // a value set on the command line (ldmc_cfg_set)
        return LDMC_ERR(err, "%s (--set): %s: %s", node->file,
                        ldmc_cfg_path(node, path, sizeof path), message);
    return LDMC_ERR(err, "%s:%d: %s: %s", node->file, node->line,
                    ldmc_cfg_path(node, path, sizeof path), message);
}

int ldmc_cfg_check_keys(const ldmc_cfg *map, const char *const *allowed, ldmc_err *err) {
    for (int i = 0; i < map->count; i++) {
        bool known = false;
        for (const char *const *a = allowed; *a && !known; a++)
            known = strcmp(*a, map->items[i]->key) == 0;
        if (known) continue;
        char list[512];
        int len = 0;
        for (const char *const *a = allowed; *a && len < (int)sizeof list; a++)
            len += snprintf(list + len, sizeof list - (size_t)len, "%s%s", a == allowed ? "" : ", ",
                            *a);
        return ldmc_cfg_error(map->items[i], err, "unknown key (expected one of: %s)", list);
    }
    return 0;
}

// A missing entry: an error when required.
static const ldmc_cfg *entry(const ldmc_cfg *map, const char *key, bool required, ldmc_err *err,
                             int *rc) {
    const ldmc_cfg *n = ldmc_cfg_get(map, key);
    *rc = 0;
    if (!n && required) {
        char path[256];
        *rc = LDMC_ERR(err, "%s:%d: %s%s%s: missing (required)", map->file, map->line,
                       ldmc_cfg_path(map, path, sizeof path), map->parent ? "." : "", key);
    }
    return n;
}

static int parse_int(const ldmc_cfg *n, int64_t min, int64_t max, int64_t *out, ldmc_err *err) {
    if (n->kind != LDMC_CFG_SCALAR)
        return ldmc_cfg_error(n, err, "expected a whole number, got a %s",
                              n->kind == LDMC_CFG_LIST ? "list" : "map");
    char *end;
    errno = 0;
    long long v = strtoll(n->value, &end, 10);
    if (errno || end == n->value || *end != '\0')
        return ldmc_cfg_error(n, err, "expected a whole number, got '%s'", n->value);
    if (v < min || v > max)
        return ldmc_cfg_error(n, err, "%lld is outside [%lld, %lld]", v, (long long)min,
                              (long long)max);
    *out = v;
    return 0;
}

int ldmc_cfg_int(const ldmc_cfg *map, const char *key, bool required, int64_t min, int64_t max,
                 int64_t *out, ldmc_err *err) {
    int rc;
    const ldmc_cfg *n = entry(map, key, required, err, &rc);
    return n ? parse_int(n, min, max, out, err) : rc;
}

int ldmc_cfg_double(const ldmc_cfg *map, const char *key, bool required, double *out,
                    ldmc_err *err) {
    int rc;
    const ldmc_cfg *n = entry(map, key, required, err, &rc);
    if (!n) return rc;
    if (n->kind != LDMC_CFG_SCALAR) return ldmc_cfg_error(n, err, "expected a number");
    char *end;
    errno = 0;
    double v = strtod(n->value, &end);
    if (errno || end == n->value || *end != '\0' || !isfinite(v))
        return ldmc_cfg_error(n, err, "expected a finite number, got '%s'", n->value);
    *out = v;
    return 0;
}

int ldmc_cfg_bool(const ldmc_cfg *map, const char *key, bool required, bool *out, ldmc_err *err) {
    int rc;
    const ldmc_cfg *n = entry(map, key, required, err, &rc);
    if (!n) return rc;
    if (n->kind == LDMC_CFG_SCALAR && (!strcmp(n->value, "true") || !strcmp(n->value, "True"))) {
        *out = true;
        return 0;
    }
    if (n->kind == LDMC_CFG_SCALAR && (!strcmp(n->value, "false") || !strcmp(n->value, "False"))) {
        *out = false;
        return 0;
    }
    return ldmc_cfg_error(n, err, "expected true or false");
}

int ldmc_cfg_int_list(const ldmc_cfg *map, const char *key, bool required, bool scalar_ok,
                      int64_t min, int64_t max, int64_t *out, int capacity, int *count,
                      ldmc_err *err) {
    int rc;
    const ldmc_cfg *n = entry(map, key, required, err, &rc);
    if (!n) return rc;
    if (n->kind == LDMC_CFG_SCALAR && scalar_ok) {
        *count = 1;
        return parse_int(n, min, max, out, err);
    }
    if (n->kind != LDMC_CFG_LIST) return ldmc_cfg_error(n, err, "expected a list of whole numbers");
    if (n->count > capacity)
        return ldmc_cfg_error(n, err, "%d entries; at most %d are supported", n->count, capacity);
    for (int i = 0; i < n->count; i++)
        if (parse_int(n->items[i], min, max, &out[i], err) != 0) return -1;
    *count = n->count;
    return 0;
}

static ldmc_cfg *child(ldmc_cfg *map, const char *key) {
    for (int i = 0; i < map->count; i++)
        if (strcmp(map->items[i]->key, key) == 0) return map->items[i];
    return NULL;
}

// Moves a parsed override's nodes into the tree's file (the parse's own is freed) with line 0,
// which messages print as "(--set)".
static void adopt(ldmc_cfg *n, const char *file) {
    n->file = file;
    n->line = 0;
    for (int i = 0; i < n->count; i++)
        adopt(n->items[i], file);
}

int ldmc_cfg_set(ldmc_cfg *root, const char *path, const char *value, ldmc_err *err) {
    char buf[256];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf || !*path)
        return LDMC_ERR(err, "--set %s: not a key path", path);
    // The value is parsed as YAML on its own ("x: <value>"), so lists and maps work too.
    size_t n = strlen(value) + 8;
    char *doc = malloc(n);
    if (!doc) return LDMC_ERR(err, "out of memory");
    snprintf(doc, n, "x: %s\n", value);
    ldmc_cfg *parsed = ldmc_cfg_parse(doc, "--set", err);
    free(doc);
    if (!parsed) return -1;
    ldmc_cfg *node = root, *v = parsed->items[0];
    int rc = 0;
    for (char *part = strtok(buf, "."), *next; part && rc == 0; part = next) {
        next = strtok(NULL, ".");
        if (node->kind != LDMC_CFG_MAP) {
            rc = LDMC_ERR(err, "--set %s: '%s' is inside a value that is not a map", path, part);
            break;
        }
        ldmc_cfg *c = child(node, part);
        if (!next) { // the leaf: replace or add
            if (c) {
                for (int i = 0; i < node->count; i++)
                    if (node->items[i] == c) node->items[i] = v;
                free_tree(c);
            } else if (add_item(node, v) != 0) {
                rc = LDMC_ERR(err, "out of memory");
                break;
            }
            free(v->key); // "x", the key it was parsed under
            v->key = strdup(part);
            v->parent = node;
            adopt(v, node->file);
            parsed->count = 0; // v now belongs to the tree
            break;
        }
        if (!c) {
            c = new_node(LDMC_CFG_MAP, 0, node, node->file);
            if (!c || add_item(node, c) != 0) {
                rc = LDMC_ERR(err, "out of memory");
                break;
            }
            c->key = strdup(part);
        }
        node = c;
    }
    for (int i = 0; i < parsed->count; i++)
        free_tree(parsed->items[i]);
    parsed->count = 0;
    free(parsed->items);
    free((char *)parsed->file);
    free(parsed);
    return rc;
}

// A scalar as YAML reads it back: plain when that is safe, else double-quoted.
static void write_scalar(const char *v, FILE *out) {
    bool plain = *v && !strchr(" \t-?:,[]{}#&*!|>'\"%@`", v[0]) && v[strlen(v) - 1] != ' ' &&
                 !strstr(v, ": ") && !strstr(v, " #") && !strpbrk(v, "\n\"\\");
    if (plain) {
        fputs(v, out);
        return;
    }
    fputc('"', out);
    for (const char *c = v; *c; c++) {
        if (*c == '"' || *c == '\\') fputc('\\', out);
        if (*c == '\n')
            fputs("\\n", out);
        else
            fputc(*c, out);
    }
    fputc('"', out);
}

static void write_node(const ldmc_cfg *n, FILE *out, int indent) {
    if (n->kind == LDMC_CFG_SCALAR) {
        fputc(' ', out);
        write_scalar(n->value, out);
        fputc('\n', out);
        return;
    }
    if (n->kind == LDMC_CFG_LIST) {
        bool flat = true;
        for (int i = 0; i < n->count; i++)
            flat &= n->items[i]->kind == LDMC_CFG_SCALAR;
        if (flat) {
            fprintf(out, " [");
            for (int i = 0; i < n->count; i++) {
                if (i) fputs(", ", out);
                write_scalar(n->items[i]->value, out);
            }
            fprintf(out, "]\n");
            return;
        }
        fprintf(out, "\n");
        for (int i = 0; i < n->count; i++) {
            fprintf(out, "%*s-", indent, "");
            write_node(n->items[i], out, indent + 2);
        }
        return;
    }
    if (n->parent) fprintf(out, "\n");
    for (int i = 0; i < n->count; i++) {
        fprintf(out, "%*s%s:", indent, "", n->items[i]->key);
        write_node(n->items[i], out, indent + 2);
    }
}

int ldmc_cfg_write(const ldmc_cfg *root, FILE *out) {
    write_node(root, out, 0);
    return ferror(out) ? -1 : 0;
}
