/* CUDA build of the LWE kernel; its single source is accel/backends/opencl/lwe.cl. */
#include "lwe.cl"
