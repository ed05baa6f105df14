"""The CUDA runtime for the Montgomery kernels.

pycuda drives the GPU when it is importable, CuPy (``cupy.RawModule``) otherwise. The kernel
text is ``montgomery.cu`` with its includes inlined, so the runtime compiler needs no include
path and a change in any included file changes the text that the runtime caches by.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from accel.backends.opencl.kernel_backend import KERNEL_DIR as OPENCL_KERNEL_DIR
from accel.backends.opencl.kernel_backend import KernelBackend, inline_includes

CUDA_KERNEL_DIR = Path(__file__).resolve().parent
INCLUDE_DIRS = (CUDA_KERNEL_DIR, OPENCL_KERNEL_DIR)
_THREADS_PER_BLOCK = 128
_MAX_THREADS_PER_BLOCK = 1024


def kernel_sources() -> list[Path]:
    """The ``.cu`` files of this backend (each compiles on its own with ``-I`` INCLUDE_DIRS)."""
    return sorted(CUDA_KERNEL_DIR.glob("*.cu"))


class _PyCudaRuntime:
    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401  (creates the context on device 0)
        import pycuda.driver as drv
        import pycuda.gpuarray as gpuarray
        from pycuda.compiler import SourceModule

        self.drv, self.gpuarray, self.SourceModule = drv, gpuarray, SourceModule
        self.errors: tuple[type[BaseException], ...] = (drv.Error,)
        self.device_name = drv.Context.get_device().name()

    def build(self, source: str, options: list[str]) -> Any:
        return self.SourceModule(source, options=options, no_extern_c=True)

    def function(self, module: Any, name: str) -> Any:
        return module.get_function(name)

    def upload(self, host: np.ndarray) -> Any:
        return self.gpuarray.to_gpu(host)

    def alloc(self, words: int) -> Any:
        return self.gpuarray.empty(max(1, words), dtype=np.uint64)

    def launch(self, fn: Any, blocks: int, threads: int, args: list[Any]) -> None:
        fn(*[a.gpudata if hasattr(a, "gpudata") else a for a in args],
           block=(threads, 1, 1), grid=(blocks, 1))

    def download(self, buffer: Any, shape: tuple[int, ...]) -> np.ndarray:
        words = int(np.prod(shape))
        return buffer.get()[:words].reshape(shape)

    def synchronize(self) -> None:
        self.drv.Context.synchronize()


class _CupyRuntime:
    def __init__(self) -> None:
        import cupy

        self.cupy = cupy
        count = cupy.cuda.runtime.getDeviceCount()  # raises when there is no driver or GPU
        if count == 0:
            raise RuntimeError("no NVIDIA GPU visible to the CUDA runtime")
        self.errors = (
            cupy.cuda.driver.CUDADriverError,
            cupy.cuda.runtime.CUDARuntimeError,
            cupy.cuda.memory.OutOfMemoryError,
            cupy.cuda.compiler.CompileException,
        )
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        self.device_name = name.decode() if isinstance(name, bytes) else str(name)

    def build(self, source: str, options: list[str]) -> Any:
        module = self.cupy.RawModule(code=source, options=tuple(options))
        module.compile()
        return module

    def function(self, module: Any, name: str) -> Any:
        return module.get_function(name)

    def upload(self, host: np.ndarray) -> Any:
        return self.cupy.asarray(host)

    def alloc(self, words: int) -> Any:
        return self.cupy.empty(max(1, words), dtype=self.cupy.uint64)

    def launch(self, fn: Any, blocks: int, threads: int, args: list[Any]) -> None:
        fn((blocks,), (threads,), tuple(args))

    def download(self, buffer: Any, shape: tuple[int, ...]) -> np.ndarray:
        words = int(np.prod(shape))
        return self.cupy.asnumpy(buffer.ravel()[:words]).reshape(shape)

    def synchronize(self) -> None:
        self.cupy.cuda.Device().synchronize()


def _runtime() -> Any:
    try:
        import pycuda  # noqa: F401
    except ImportError:
        pass
    else:
        return _PyCudaRuntime()
    try:
        import cupy  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("no CUDA runtime for Python: neither pycuda nor cupy imports") from exc
    return _CupyRuntime()


class CudaBackend(KernelBackend):
    name = "cuda"
    tables_on_device = True

    def __init__(self) -> None:
        super().__init__()
        self.runtime = _runtime()
        self.device_errors = self.runtime.errors

    def devices(self) -> list[str]:
        return [self.runtime.device_name]

    def kernel_path(self, name: str) -> Path:
        return CUDA_KERNEL_DIR / f"{name}.cu"

    def kernel_source(self, name: str) -> str:
        return inline_includes(self.kernel_path(name), INCLUDE_DIRS)

    def max_group_size(self) -> int:
        return _MAX_THREADS_PER_BLOCK

    def fixed_base_window(self, exp_bits: int) -> int:
        # GPU memory is plentiful and table reads are a small part of the traffic, so a
        # wider window pays: 11 bits cut the multiplications of a DJN encryption (2048-bit
        # key, 1152-bit exponents) from 144 to 105 for a 110 MiB table.
        return 11 if exp_bits >= 512 else super().fixed_base_window(exp_bits)

    def _build(self, source: str, defines: dict[str, int]) -> Any:
        module = self.runtime.build(source, [f"-D{k}={v}" for k, v in defines.items()])
        return {"module": module, "functions": {}}

    def _upload(self, host: np.ndarray, writable: bool = False) -> Any:
        return self.runtime.upload(np.ascontiguousarray(host))

    def _alloc(self, words: int) -> Any:
        return self.runtime.alloc(words)

    def _launch(self, program: Any, kernel: str, threads: int, args: list[Any],
                group: int | None = None) -> None:
        functions = program["functions"]
        if kernel not in functions:
            functions[kernel] = self.runtime.function(program["module"], kernel)
        block = group or _THREADS_PER_BLOCK
        self.runtime.launch(functions[kernel], -(-threads // block), block, args)

    def _download(self, buffer: Any, shape: tuple[int, ...]) -> np.ndarray:
        return self.runtime.download(buffer, shape)

    def synchronize(self) -> None:
        self.runtime.synchronize()
