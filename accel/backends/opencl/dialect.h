/* One spelling for OpenCL C and CUDA, so that every kernel has a single source.
 * nvcc defines __CUDACC__, NVRTC __CUDACC_RTC__ as well; OpenCL compilers neither. */
#ifndef PEC_DIALECT_H
#define PEC_DIALECT_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned char u8;
#define KERNEL extern "C" __global__ void
#define GLOBAL
#define SHARED __shared__
#define SHARED_PTR /* a plain pointer reaches shared memory in CUDA */
#define DEVICE static __device__ __forceinline__
#define MULHI(a, b) __umul64hi((a), (b))
#define CLZ64(x) ((u32)__clzll((long long)(x)))
#define GLOBAL_ID() ((u64)blockIdx.x * blockDim.x + threadIdx.x)
#define LOCAL_ID() ((u32)threadIdx.x)
#define GROUP_ID() ((u64)blockIdx.x)
#define BARRIER() __syncthreads()
#define GROUP_SIZE(n) __launch_bounds__(n)
#else
typedef ulong u64;
typedef uint u32;
typedef uchar u8;
#define KERNEL __kernel void
#define GLOBAL __global
#define SHARED __local
#define SHARED_PTR __local
#define DEVICE static inline
#define MULHI(a, b) mul_hi((a), (b))
#define CLZ64(x) ((u32)clz(x))
#define GLOBAL_ID() ((u64)get_global_id(0))
#define LOCAL_ID() ((u32)get_local_id(0))
#define GROUP_ID() ((u64)get_group_id(0))
#define BARRIER() barrier(CLK_LOCAL_MEM_FENCE)
#define GROUP_SIZE(n) __attribute__((reqd_work_group_size(n, 1, 1)))
#endif

#endif
