/* CUDA build of the NTT kernels; their single source is accel/backends/opencl/ntt.cl. */
#include "ntt.cl"
