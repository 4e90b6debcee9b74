// Folders: creating and removing them (see files.h). Tested by tests/test_train.c.
#define _XOPEN_SOURCE 700
#include "io/files.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
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

int ldmc_path_resolve(const char *base, const char *path, char *out, size_t size) {
    char at[PATH_MAX], real[PATH_MAX], cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) cwd[0] = '\0';
    if (path[0] == '/')
        snprintf(at, sizeof at, "/");
    else if (realpath(base[0] ? base : ".", real))
        snprintf(at, sizeof at, "%s", real);
    else if (snprintf(at, sizeof at, "%s/%s", base[0] == '/' ? "" : cwd, base) >= (int)sizeof at)
        return -1; // (a folder that does not exist is taken as written)
    const char *p = path;
    while (*p) {
        size_t n = strcspn(p, "/");
        if (n == 2 && !strncmp(p, "..", 2)) {
            if (realpath(at, real)) snprintf(at, sizeof at, "%s", real);
            drop_last(at);
        } else if (n && !(n == 1 && p[0] == '.')) {
            size_t len = strlen(at);
            if (len + n + 2 > sizeof at) return -1;
            if (len == 0 || at[len - 1] != '/') at[len++] = '/';
            memcpy(at + len, p, n);
            at[len + n] = '\0';
        }
        p += n + (p[n] == '/');
    }
    size_t c = strlen(cwd);
    const char *shown = at;
    if (c > 1 && !strncmp(at, cwd, c) && (at[c] == '/' || at[c] == '\0'))
        shown = at[c] ? at + c + 1 : ".";
    int len = snprintf(out, size, "%s", shown);
    return len >= 0 && (size_t)len < size ? 0 : -1;
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
