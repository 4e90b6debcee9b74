// Thread-count setting (see threads.h). Tested by tests/test_core.c.
#include "core/threads.h"

#include <cblas.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

void ldmc_threads_set(int n) {
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int ldmc_threads_get(void) { return omp_get_max_threads(); }

void ldmc_threads_init_from_env(void) {
    const char *s = getenv("LDMC_THREADS");
    if (s && *s) ldmc_threads_set(atoi(s));
}

const char *ldmc_blas_core_name(void) { return openblas_get_corename(); }

// The AVX-512 core to ask OpenBLAS for, when the CPU has AVX-512 but OpenBLAS runs AVX2
// kernels; NULL otherwise.
static const char *better_core(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    const char *core = openblas_get_corename();
    bool avx2_core = strcasecmp(core, "haswell") == 0 || strcasecmp(core, "zen") == 0;
    __builtin_cpu_init();
    bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    if (avx2_core && avx512)
        return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
#endif
    return NULL;
}

void ldmc_blas_select_kernels(char **argv) {
    const char *core = getenv("OPENBLAS_CORETYPE") ? NULL : better_core();
    if (!core) return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE"); // exec failed: carry on with the AVX2 kernels
}

const char *ldmc_blas_hint(void) {
    static char hint[160];
    const char *set = getenv("OPENBLAS_CORETYPE"), *core = better_core();
    if (!set || !core) return NULL;
    snprintf(hint, sizeof hint,
             "OPENBLAS_CORETYPE=%s is set, but this CPU runs OpenBLAS's %s "
             "(AVX-512) kernels about twice as fast: unset it",
             set, core);
    return hint;
}
