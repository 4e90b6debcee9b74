// Errors: fatal errors for broken invariants and misuse of the API (they keep file:line and, by
// default, print and exit; tests install a handler that longjmps), and recoverable errors
// (ldmc_err) for user input such as files and configs, which callers report and survive.
// Tested by tests/test_core.c.
#pragma once
#include <stdbool.h>

#ifdef __cplusplus
#define LDMC_NORETURN [[noreturn]]
extern "C" {
#else
#define LDMC_NORETURN _Noreturn
#endif

#if defined(__GNUC__)
#define LDMC_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define LDMC_PRINTF(fmt_index, first_arg)
#endif

// A fatal error: formats "file:line: message", hands it to the handler (which may longjmp), and
// exits with status 1 if the handler returns or none is set.
LDMC_NORETURN void ldmc_fatal_at(const char *file, int line, const char *fmt, ...)
    LDMC_PRINTF(3, 4);
#define LDMC_FATAL(...) ldmc_fatal_at(__FILE__, __LINE__, __VA_ARGS__)
// Always on, whatever NDEBUG says: a runtime condition, not a debugging aid.
#define LDMC_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) ldmc_fatal_at(__FILE__, __LINE__, __VA_ARGS__);                               \
    } while (0)

typedef void (*ldmc_fatal_handler)(const char *message);
// Returns the previous handler. NULL restores the default (print to stderr, exit 1).
ldmc_fatal_handler ldmc_set_fatal_handler(ldmc_fatal_handler handler);

// A recoverable error: the first failure's message, naming the thing (file, tensor, key) and what
// was expected, followed by the library location in parentheses.
typedef struct ldmc_err {
    bool failed;
    char message[2048];
} ldmc_err;

// Records the message (only the first one; later ones are dropped) and returns -1 so that callers
// can write `return LDMC_ERR(err, ...)`.
int ldmc_err_set_at(ldmc_err *err, const char *file, int line, const char *fmt, ...)
    LDMC_PRINTF(4, 5);
#define LDMC_ERR(err, ...) ldmc_err_set_at((err), __FILE__, __LINE__, __VA_ARGS__)
void ldmc_err_clear(ldmc_err *err);

#ifdef __cplusplus
}
#endif
