/* CUDA build of the Montgomery kernels. The arithmetic has one source, the portable
 * accel/backends/opencl/montgomery.cl (dialect.h gives the CUDA spelling); the backend inlines
 * the includes before handing the text to the runtime compiler, and the compile test runs
 * nvcc on this file with -I pointing at the OpenCL kernel directory. */
#include "montgomery.cl"
