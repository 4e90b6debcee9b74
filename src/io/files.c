// Folders: creating and removing them (see files.h). Tested by tests/test_train.c.
#define _XOPEN_SOURCE 700
#include "io/files.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// Drops the last component of an absolute path (never the root).
static void drop_last(char *path) {
    char *slash = strrchr(path, '/');
    if (slash && slash != path)
        *slash = '\0';
    else
        path[1] = '\0';
}

// Appends the components of `rel` to the absolute path `at` (size bytes): "." is skipped, ".." is
// the real parent of an existing folder, the lexical one of a folder not made yet. -1 when the
// result does not fit.
static int walk(char *at, size_t size, const char *rel) {
    char real[PATH_MAX];
    for (const char *p = rel; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && !strncmp(p, "..", 2)) {
            if (realpath(at, real)) snprintf(at, size, "%s", real);
            drop_last(at);
        } else if (n && !(n == 1 && p[0] == '.')) {
            size_t len = strlen(at);
            if (at[len - 1] != '/') {
                if (len + 1 >= size) return -1;
                at[len++] = '/';
            }
            if (len + n + 1 > size) return -1;
            memcpy(at + len, p, n);
            at[len + n] = '\0';
        }
        p += n + (p[n] == '/');
    }
    return 0;
}

int ldmc_path_resolve(const char *base, const char *path, char *out, size_t size) {
    char at[PATH_MAX], cwd[PATH_MAX];
    bool have_cwd = getcwd(cwd, sizeof cwd) != NULL;
    if (path[0] == '/') {
        snprintf(at, sizeof at, "/");
    } else if (!realpath(base[0] ? base : ".", at)) { // a folder not made yet: walked as written
        if (base[0] != '/' && !have_cwd) return -1;
        snprintf(at, sizeof at, "%s", base[0] == '/' ? "/" : cwd);
        if (walk(at, sizeof at, base) != 0) return -1;
    }
    if (walk(at, sizeof at, path) != 0) return -1;
    size_t c = have_cwd ? strlen(cwd) : 0;
    const char *shown = at;
    if (c > 1 && !strncmp(at, cwd, c) && (at[c] == '/' || at[c] == '\0'))
        shown = at[c] ? at + c + 1 : ".";
    int len = snprintf(out, size, "%s", shown);
    return len >= 0 && (size_t)len < size ? 0 : -1;
}

bool ldmc_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int ldmc_mkdirs(const char *path, ldmc_err *err) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return LDMC_ERR(err, "%s: cannot create: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return LDMC_ERR(err, "%s: cannot create: %s", buf, strerror(errno));
    return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int ldmc_remove_tree(const char *path) {
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}
