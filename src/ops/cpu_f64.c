// The CPU kernels in f64: the same code as cpu_f32.c, for finite-difference gradient checks.
#include "ops/cpu_kernels.h"

#define REAL double
#define REAL_IS_DOUBLE 1
#define FN(name) name##_f64
#include "ops/cpu/all.inc"
