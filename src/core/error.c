// Fatal and recoverable errors (see error.h). Tested by tests/test_core.c.
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ldmc_fatal_handler fatal_handler;

ldmc_fatal_handler ldmc_set_fatal_handler(ldmc_fatal_handler handler) {
    ldmc_fatal_handler previous = fatal_handler;
    fatal_handler = handler;
    return previous;
}

static const char *short_path(const char *file) {
    const char *src = strstr(file, "src/");
    if (!src) src = strstr(file, "kernels/");
    if (!src) src = strstr(file, "tests/");
    return src ? src : file;
}

_Noreturn void ldmc_fatal_at(const char *file, int line, const char *fmt, ...) {
    char message[1024];
    int n = snprintf(message, sizeof message, "%s:%d: ", short_path(file), line);
    va_list args;
    va_start(args, fmt);
    vsnprintf(message + n, sizeof message - (size_t)n, fmt, args);
    va_end(args);
    if (fatal_handler) fatal_handler(message);
    fflush(stdout);
    fprintf(stderr, "ldmc: error: %s\n", message);
    exit(EXIT_FAILURE);
}

int ldmc_err_set_at(ldmc_err *err, const char *file, int line, const char *fmt, ...) {
    if (!err || err->failed) return -1;
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(err->message, sizeof err->message, fmt, args);
    va_end(args);
    if (n >= 0 && (size_t)n < sizeof err->message)
        snprintf(err->message + n, sizeof err->message - (size_t)n, " (%s:%d)", short_path(file),
                 line);
    err->failed = true;
    return -1;
}

void ldmc_err_clear(ldmc_err *err) {
    err->failed = false;
    err->message[0] = '\0';
}
