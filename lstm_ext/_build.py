"""How lstm_ext's C++/CUDA sources are built: the one home of the source list, the flags and the
toolkit discovery, used by setup.py and by the on-the-fly build of ``import lstm_ext``.

Importing this module does not import torch, so setup.py can set CUDA_HOME before
``torch.utils.cpp_extension`` reads it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

CPU_SOURCES = [
    "module.cpp",
    "ops.cpp",
    "layer_ops.cpp",
    "arg_checks.cpp",
    "sequence_layout.cpp",
    "lstm_recurrence.cpp",
    "step_kernels.cpp",
    "cpu/blas_gemm.cpp",
    "cpu/huge_page_allocator.cpp",
    "cpu/pointwise_cpu.cpp",
    "emulated/pointwise_emulated.cpp",  # the CUDA kernels run on the CPU, for the tests
    "testing/cpu_gemm_testing.cpp",  # the CPU GEMMs as ops of their own, for the tests
    "emulated/emulation_selftest.cpp",  # the emulation's own barrier/shared-memory tests
    "cpu/pointwise_cpu_avx2.cpp",  # the vector builds last, AVX2 first: see their comments on link order
    "cpu/pointwise_cpu_avx512.cpp",
]
CUDA_SOURCES = [
    "cuda/pointwise_cuda.cu",
]
# Register spills or local memory in our kernels fail the build; -v prints each kernel's registers.
PTXAS_GATE = "-Xptxas=-v,-warn-spills,-warn-lmem-usage,-Werror"
DEFAULT_ARCH_LIST = "8.0;9.0"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _has_nvcc(root: str | None) -> bool:
    return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc"))


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: $CUDA_HOME/$CUDA_PATH if it holds bin/nvcc, else where the nvcc on PATH
    really lives (it may be a wrapper script, so ask it: `nvcc -dryrun` prints its TOP), else
    /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _has_nvcc(os.environ.get(var)):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            dry = subprocess.run([nvcc, "-dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60)
            match = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
            if match and _has_nvcc(os.path.realpath(match.group(1).strip())):
                return os.path.realpath(match.group(1).strip())
        except (OSError, subprocess.SubprocessError):
            pass
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if _has_nvcc(root):
            return root
    return "/usr/local/cuda" if _has_nvcc("/usr/local/cuda") else None


def nvidia_wheel_include_dirs() -> list[str]:
    """Include folders of the nvidia-* wheels beside torch (cublas_v2.h, cusparse.h, ...): torch's CUDA
    headers include them, and a toolkit without cuBLAS/cuSPARSE does not have them."""
    dirs = []
    for site in sys.path:
        for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
            for d in sorted(glob.glob(os.path.join(site, pattern))):
                if os.path.isfile(os.path.join(d, "cublas_v2.h")) or os.path.isfile(os.path.join(d, "cusparse.h")):
                    if d not in dirs:
                        dirs.append(d)
    return dirs


def want_cuda(torch_module) -> bool:
    """FORCE_CPU=1 builds the CPU-only extension, FORCE_CUDA=1 insists on CUDA; otherwise CUDA is built
    when torch has it and a toolkit is found."""
    if _env_flag("FORCE_CPU"):
        return False
    have_toolkit = find_cuda_home() is not None
    if _env_flag("FORCE_CUDA"):
        if not have_toolkit:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit (nvcc) was found: set CUDA_HOME")
        return True
    return bool(torch_module.version.cuda) and have_toolkit


def configure_cuda_environment(torch_module) -> None:
    """Point torch.utils.cpp_extension at the real toolkit and default TORCH_CUDA_ARCH_LIST when no GPU
    can be asked for its architecture. Call before building a CUDA extension."""
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
        if "torch.utils.cpp_extension" in sys.modules:  # it read CUDA_HOME when first imported
            sys.modules["torch.utils.cpp_extension"].CUDA_HOME = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch_module.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST


def openmp_flags() -> list[str]:
    """at::parallel_for is a header template: its `#pragma omp parallel` runs in parallel only when the
    extension itself is compiled with -fopenmp (else it runs the whole range on the calling thread). The
    link then names libgomp.so.1, which resolves to the copy torch has already loaded."""
    return [] if sys.platform == "darwin" else ["-fopenmp"]


def compile_args(with_cuda: bool) -> dict[str, list[str]]:
    cxx = ["-O3"] + openmp_flags() + (["-DLSTM_EXT_WITH_CUDA"] if with_cuda else [])
    args = {"cxx": cxx}
    if with_cuda:
        # -isystem: searched after the toolkit's own -I folders, so the toolkit's headers win.
        system_includes = [arg for d in nvidia_wheel_include_dirs() for arg in ("-isystem", d)]
        args["cxx"] = cxx + system_includes
        args["nvcc"] = ["-O3", "-DLSTM_EXT_WITH_CUDA", "-lineinfo", PTXAS_GATE] + system_includes
    return args


def link_args() -> list[str]:
    return openmp_flags()


def sources(with_cuda: bool, relative_to: Path | None = None) -> list[str]:
    """The source files, absolute or relative to `relative_to` (setuptools wants them relative)."""
    paths = [CSRC / n for n in CPU_SOURCES + (CUDA_SOURCES if with_cuda else [])]
    return [os.path.relpath(p, relative_to) if relative_to else str(p) for p in paths]
