// Thread-count setting (see threads.h). Tested by tests/test_core.c.
#include "core/threads.h"

#include <cblas.h>
#include <omp.h>
#include <stdbool.h>
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

void ldmc_blas_select_kernels(char **argv) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (getenv("OPENBLAS_CORETYPE")) return;
    const char *core = openblas_get_corename();
    bool avx2_core = strcasecmp(core, "haswell") == 0 || strcasecmp(core, "zen") == 0;
    __builtin_cpu_init();
    bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    if (!avx2_core || !avx512) return;
    bool bf16 = __builtin_cpu_supports("avx512bf16");
    setenv("OPENBLAS_CORETYPE", bf16 ? "Cooperlake" : "SkylakeX", 1);
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE");  // exec failed: carry on with the AVX2 kernels
#else
    (void)argv;
#endif
}
