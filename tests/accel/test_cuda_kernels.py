"""CUDA kernels: they compile with nvcc everywhere, and run (same cases as OpenCL) on a GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from accel import backends
from accel.backends.base import Backend
from accel.backends.cuda.backend import (
    INCLUDE_DIRS,
    inline_includes,
    kernel_sources,
)
from tests.accel.gpu import cuda_backend, nvidia_gpu_present
from tests.accel.test_opencl_kernels import KernelChecks


def nvcc() -> str:
    found = shutil.which("nvcc") or next(
        (p for p in ("/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        pytest.fail("nvcc is not installed: the CUDA kernels must compile on every machine")
    return found


def compile_cuda(source: Path, out: Path, mode: str, limbs: int) -> None:
    includes = [f"-I{d}" for d in INCLUDE_DIRS]
    cmd = [nvcc(), "-arch=sm_90", *includes, f"-DNLIMBS={limbs}", mode, "-o", str(out),
           str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"nvcc failed on {source.name}:\n{done.stderr}"
    assert out.stat().st_size > 0


def test_there_are_cuda_sources() -> None:
    assert {"lwe.cu", "montgomery.cu", "ntt.cu"} <= {p.name for p in kernel_sources()}


# cubin runs ptxas too (register allocation), which is where 64-limb kernels are slowest to
# build, so the largest size stops at PTX to keep the suite short.
@pytest.mark.parametrize(("limbs", "mode"), [(1, "-cubin"), (32, "-cubin"), (64, "-ptx")])
@pytest.mark.parametrize("source", kernel_sources(), ids=lambda p: p.name)
def test_cuda_source_compiles_with_nvcc(tmp_path: Path, source: Path, limbs: int,
                                        mode: str) -> None:
    compile_cuda(source, tmp_path / f"{source.stem}.{mode[1:]}", mode, limbs)


@pytest.mark.parametrize("source", kernel_sources(), ids=lambda p: p.name)
def test_runtime_text_compiles_without_include_paths(tmp_path: Path, source: Path) -> None:
    # The runtime compiler gets the text with includes inlined: it must stand on its own.
    text = inline_includes(source, INCLUDE_DIRS)
    assert "#include" not in text and "KERNEL " in text
    standalone = tmp_path / "standalone.cu"
    standalone.write_text(text)
    cmd = [nvcc(), "-arch=sm_90", "-DNLIMBS=2", "-ptx", "-o", str(tmp_path / "s.ptx"),
           str(standalone)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_missing_include_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cu"
    bad.write_text('#include "no_such_header.cl"\n')
    with pytest.raises(FileNotFoundError, match=r"no_such_header\.cl"):
        inline_includes(bad, INCLUDE_DIRS)


def test_cuda_backend_reports_why_it_cannot_run() -> None:
    entry = next(e for e in backends.available() if e["name"] == "cuda")
    if nvidia_gpu_present():
        assert entry["healthy"], entry["reason"]
        assert entry["devices"]
    else:
        assert entry["healthy"] is False
        assert entry["reason"]


@pytest.fixture(scope="module")
def backend() -> Backend:
    return cuda_backend()


@pytest.mark.gpu
class TestCudaKernels(KernelChecks):
    def test_device_is_an_nvidia_gpu(self, backend: Backend) -> None:
        assert backend.devices() and backend.devices()[0]
