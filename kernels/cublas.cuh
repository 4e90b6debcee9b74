// cuBLAS for the .cu files that call it: checked calls that keep the file and line.
#pragma once
#include <cublas_v2.h>

#include "core/error.h"

#define CUBLAS_CHECK(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            ldmc_fatal_at(__FILE__, __LINE__, "cuBLAS: %s failed: %s", #call,                      \
                          cublasGetStatusString(s_));                                              \
    } while (0)
