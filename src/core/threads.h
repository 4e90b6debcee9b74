// The one thread-count setting. Every parallel loop in ldmc is an OpenMP loop and every GEMM goes
// through OpenBLAS's OpenMP build, so omp_set_num_threads governs both; LDMC_THREADS in the
// environment sets the default. Tested by tests/test_core.c.
#pragma once

// Sets the number of threads for OpenMP loops and OpenBLAS. n <= 0 means "all cores".
void ldmc_threads_set(int n);
int ldmc_threads_get(void);
// Applies LDMC_THREADS from the environment if set (called by the CLI and tests at start).
void ldmc_threads_init_from_env(void);

// Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) picks its AVX2 "Haswell" kernels on AVX-512 AMD CPUs
// it does not know (Zen 4/5), which halves GEMM throughput there. It reads OPENBLAS_CORETYPE
// only when it is loaded, so the CLI calls this first: when the CPU has AVX-512 (F, BW, DQ, VL)
// and OpenBLAS chose an AVX2 core, it re-executes the program with OPENBLAS_CORETYPE=SkylakeX
// (Cooperlake with AVX512-BF16). A user's own OPENBLAS_CORETYPE is left alone. Returns only
// when no re-execution is needed or it failed.
void ldmc_blas_select_kernels(char **argv);
// When the environment pins OpenBLAS to AVX2 kernels on an AVX-512 CPU: a sentence saying so
// (for `ldmc info`); NULL otherwise.
const char *ldmc_blas_hint(void);
// OpenBLAS's core name ("SkylakeX", "Haswell", ...).
const char *ldmc_blas_core_name(void);
