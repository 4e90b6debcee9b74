// Build and library versions (see buildinfo.h).
#include "io/buildinfo.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <hdf5.h>
#include <jconfig.h>
#include <omp.h>
#include <png.h>
#include <yaml.h>

#include "core/threads.h"
#ifdef LDMC_HAVE_MPI
#include <mpi.h>
#endif
#include "core/device.h"

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

#ifdef LDMC_HAVE_CUDA
#define HAVE_CUDA "on"
#else
#define HAVE_CUDA "off"
#endif
#ifdef LDMC_HAVE_CUDNN
#define HAVE_CUDNN "on"
#else
#define HAVE_CUDNN "off"
#endif
#ifdef LDMC_HAVE_NCCL
#define HAVE_NCCL "on"
#else
#define HAVE_NCCL "off"
#endif
#ifdef LDMC_HAVE_MPI
#define HAVE_MPI "on"
#else
#define HAVE_MPI "off"
#endif

void ldmc_buildinfo_print(FILE *out) {
    fprintf(out, "build:       CUDA %s, cuDNN %s, NCCL %s, MPI %s\n", HAVE_CUDA, HAVE_CUDNN,
            HAVE_NCCL, HAVE_MPI);
    fprintf(out, "threads:     %d (of %d cores; set with LDMC_THREADS)\n", ldmc_threads_get(),
            omp_get_num_procs());
    fprintf(out, "OpenBLAS:    %s, kernels for %s\n", openblas_get_config(), ldmc_blas_core_name());
    if (ldmc_blas_hint()) fprintf(out, "             note: %s\n", ldmc_blas_hint());
    unsigned h5_major = 0, h5_minor = 0, h5_release = 0;
    H5get_libversion(&h5_major, &h5_minor, &h5_release);
    fprintf(out, "libraries:   libjpeg-turbo %s, libpng %s, HDF5 %u.%u.%u, libyaml %s, cJSON %s\n",
            STRINGIFY(LIBJPEG_TURBO_VERSION), png_get_libpng_ver(NULL), h5_major, h5_minor,
            h5_release, yaml_get_version_string(), cJSON_Version());
#ifdef LDMC_HAVE_MPI
    char mpi_version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(mpi_version, &len);
    for (int i = 0; i < len; i++)
        if (mpi_version[i] == '\n' || mpi_version[i] == ',') {
            mpi_version[i] = '\0';
            break;
        }
    fprintf(out, "MPI:         %s\n", mpi_version);
#endif
    ldmc_gpu_print_info(out);
}
