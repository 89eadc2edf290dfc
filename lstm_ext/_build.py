"""How lstm_ext's C++/CUDA sources are built: the one home of the source list, the flags and the
toolkit discovery, used by setup.py and by the on-the-fly build of ``import lstm_ext``.

Importing this module does not import torch, so setup.py can set CUDA_HOME before
``torch.utils.cpp_extension`` reads it.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

# The sources built for the baseline instruction set, with the extension's flags.
CPU_SOURCES = [
    "module.cpp",
    "ops.cpp",
    "layer_ops.cpp",
    "arg_checks.cpp",
    "sequence_layout.cpp",
    "lstm_recurrence.cpp",
    "step_kernels.cpp",
    "cpu/bernoulli_mask.cpp",
    "cpu/blas_gemm.cpp",
    "cpu/buffer_cache.cpp",
    "cpu/cpu_backend.cpp",
    "emulated/pointwise_emulated.cpp",  # the CUDA kernels run on the CPU, for the tests
    "emulated/persistent_emulated.cpp",  # the persistent CUDA kernels run on the CPU, for the tests
    "testing/cpu_gemm_testing.cpp",  # the CPU GEMMs as ops of their own, for the tests
    "emulated/emulation_selftest.cpp",  # the emulation's own barrier/shared-memory tests
]
CUDA_SOURCES = [
    "cuda/pointwise_cuda.cu",
    "cuda/persistent_cuda.cu",
]


class IsaVariant(NamedTuple):
    """The CPU step kernels built once more for a wider instruction set: `source` compiled on its own
    with `flags`, after which every symbol it defines is renamed and made local except its entry point
    lstm_ext::<namespace>::step_kernels() (build_isa_variant_objects)."""

    source: str
    namespace: str
    flags: tuple[str, ...]

    @property
    def entry_symbol(self) -> str:
        """lstm_ext::<namespace>::step_kernels(), mangled."""
        return f"_ZN8lstm_ext{len(self.namespace)}{self.namespace}12step_kernelsEv"

    @property
    def symbol_suffix(self) -> str:
        return f".lstm_ext_{self.namespace}"


# Not in CPU_SOURCES: a variant's inline functions of ATen, c10 and std are compiled for its instruction
# set, and if it were linked as a plain object the linker could keep those copies for the whole library
# (the first definition wins), putting AVX2 code on a CPU without it. csrc/cpu/cpu_backend.cpp picks
# one at run time; tests/test_isa_isolation.py and .ci/isa_check.sh check the result.
ISA_VARIANTS = (
    IsaVariant("cpu/cpu_backend_avx2.cpp", "avx2", ("-mavx2", "-mfma")),
    IsaVariant("cpu/cpu_backend_avx512.cpp", "avx512",
               ("-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma")),
)

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


def isa_variants_built() -> bool:
    """Whether ISA_VARIANTS are built: on x86-64 Linux (ELF objects, binutils' objcopy), as
    csrc/cpu/cpu_backend.cpp expects. Elsewhere the baseline kernels serve alone."""
    return platform.machine().lower() in ("x86_64", "amd64") and sys.platform.startswith("linux")


def _ninja_escape(text: str) -> str:
    return text.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def _ninja_command(args: list[str]) -> str:
    return shlex.join(args).replace("$", "$$")


def build_isa_variant_objects(build_dir: str | os.PathLike, cxx_flags: list[str], base_flags: list[str] | None = None,
                              stale_module: str | os.PathLike | None = None, verbose: bool = False) -> list[str]:
    """Compiles ISA_VARIANTS in `build_dir` (with ninja, so only what changed) and returns the objects to
    link into the extension, [] where none are built. Each is compiled with the extension's `cxx_flags`
    (after `base_flags`, the compiler's own: setuptools' CFLAGS) and its instruction-set flags, then
    every symbol it defines gets the variant's suffix and local binding, but the entry point: its
    inline functions and their COMDAT groups can no longer be merged with the baseline objects' copies,
    whatever the link order. -fno-lto keeps them out of a link-time optimizer's view, and
    -fno-gnu-unique makes the statics of inline functions weak symbols, which objcopy can make local.
    `stale_module`: a linked module to delete when an object is newer (torch's ninja file for
    cpp_extension.load does not know these objects, so it would not relink)."""
    if not isa_variants_built():
        return []
    from torch.utils import cpp_extension

    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    includes = cpp_extension.include_paths() + [sysconfig.get_path("include", scheme="posix_prefix")]
    common = [*(base_flags or []), "-fPIC", "-std=c++20", "-DTORCH_API_INCLUDE_EXTENSION_H",
              *(f"-isystem{d}" for d in includes), *cxx_flags, "-fno-lto", "-fno-gnu-unique"]
    lines = [
        "ninja_required_version = 1.3",
        "rule compile",
        f"  command = {_ninja_command([os.environ.get('CXX', 'c++'), '-MMD', '-MF'])} $out.d $cflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX $out",
        "rule localize",
        f"  command = {_ninja_command([sys.executable, str(Path(__file__).resolve()), 'localize'])} $in $out $namespace",
        "  description = LOCALIZE $out",
    ]
    objects = []
    for variant in ISA_VARIANTS:
        compiled = build_dir / f"{variant.namespace}.o"
        localized = build_dir / f"{variant.namespace}.local.o"
        lines += [
            f"build {_ninja_escape(str(compiled))}: compile {_ninja_escape(str(CSRC / variant.source))}",
            f"  cflags = {_ninja_command(common + list(variant.flags))}",
            f"build {_ninja_escape(str(localized))}: localize {_ninja_escape(str(compiled))} | "
            f"{_ninja_escape(str(Path(__file__).resolve()))}",
            f"  namespace = {variant.namespace}",
        ]
        objects.append(str(localized))
    ninja_file = build_dir / "build.ninja"
    text = "\n".join(lines) + "\n"
    if not ninja_file.is_file() or ninja_file.read_text() != text:
        ninja_file.write_text(text)
    command = ["ninja", "-C", str(build_dir)] + (["-v"] if verbose else [])
    if os.environ.get("MAX_JOBS", "").isdigit():
        command += ["-j", os.environ["MAX_JOBS"]]
    # Quiet unless verbose, as cpp_extension's own ninja run: the output is shown when it fails.
    run = subprocess.run(command, stdout=None if verbose else subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"building the instruction-set variants failed: `{shlex.join(command)}` exited "
                           f"{run.returncode}:\n{run.stdout or ''}")
    if stale_module is not None and os.path.exists(stale_module):
        if max(os.path.getmtime(o) for o in objects) > os.path.getmtime(stale_module):
            os.unlink(stale_module)
    return objects


def _binutil(name: str) -> str:
    tool = os.environ.get(name.upper(), name)  # $OBJCOPY, $NM, $READELF for another toolchain's
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} (binutils) is needed to build the instruction-set variants and was not "
                           f"found on PATH: install binutils, or set ${name.upper()}")
    return tool


def _defined_symbols(obj: str, extern_only: bool) -> set[str]:
    """Names of the symbols `obj` defines (section and file symbols aside)."""
    listing = subprocess.run([_binutil("nm"), "--defined-only", "-P"] + (["--extern-only"] if extern_only else [])
                             + [obj], check=True, capture_output=True, text=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def _group_signatures(obj: str) -> set[str]:
    """The signature symbols of the object's section groups (COMDAT: the linker keeps one group per name)."""
    listing = subprocess.run([_binutil("readelf"), "-gW", obj], check=True, capture_output=True, text=True).stdout
    return set(re.findall(r"^\S+ group section \[\s*\d+\] `[^']*' \[([^\]]+)\]", listing, re.MULTILINE))


def localize_variant_object(compiled: str, localized: str, namespace: str) -> None:
    """Writes `compiled` as `localized` with each defined symbol and group signature renamed to carry
    the variant's suffix and every one local but the entry point; then checks that this holds."""
    variant = next((v for v in ISA_VARIANTS if v.namespace == namespace), None)
    if variant is None:
        raise SystemExit(f"localize: namespace must be one of {[v.namespace for v in ISA_VARIANTS]}, got {namespace!r}")
    defined = _defined_symbols(compiled, extern_only=False)
    if variant.entry_symbol not in defined:
        raise SystemExit(f"localize: {compiled} does not define {variant.entry_symbol} "
                         f"(lstm_ext::{namespace}::step_kernels()), the one symbol kept global")
    renamed = sorted((defined | _group_signatures(compiled)) - {variant.entry_symbol})
    renames = Path(localized + ".renames")
    renames.write_text("".join(f"{name} {name}{variant.symbol_suffix}\n" for name in renamed))
    partial = localized + ".partial"
    subprocess.run([_binutil("objcopy"), f"--redefine-syms={renames}",
                    f"--keep-global-symbol={variant.entry_symbol}", compiled, partial], check=True)
    still_global = _defined_symbols(partial, extern_only=True) - {variant.entry_symbol}
    shared_groups = {g for g in _group_signatures(partial) if not g.endswith(variant.symbol_suffix)}
    if still_global or shared_groups:
        os.unlink(partial)
        raise SystemExit(f"localize: {compiled} still shares symbols with the other objects: global "
                         f"{sorted(still_global)[:10]}, section groups {sorted(shared_groups)[:10]}")
    os.replace(partial, localized)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "localize":
        localize_variant_object(*sys.argv[2:])
    else:
        raise SystemExit("usage: _build.py localize COMPILED.o LOCALIZED.o NAMESPACE")
