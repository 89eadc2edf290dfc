"""Builds lstm_ext._C with torch.utils.cpp_extension and ninja: a CUDAExtension when torch has CUDA and a
toolkit is found (or FORCE_CUDA=1), a CPU-only CppExtension otherwise (or FORCE_CPU=1).
The sources, flags and toolkit discovery live in lstm_ext/_build.py, shared with the on-the-fly build.
The AVX2 and AVX-512 kernels are compiled apart, each into an object of its own whose symbols are local
(lstm_ext/_build.py: ISA_VARIANTS), and linked in."""

import importlib.util
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("lstm_ext_build", ROOT / "lstm_ext" / "_build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

import torch  # noqa: E402

with_cuda = build.want_cuda(torch)
if with_cuda:
    build.configure_cuda_environment(torch)  # before cpp_extension reads CUDA_HOME

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

extension_type = CUDAExtension if with_cuda else CppExtension
print(f"lstm_ext: building the {'CUDA' if with_cuda else 'CPU-only'} extension", flush=True)


class BuildExtensionWithIsaVariants(BuildExtension):
    """BuildExtension that first builds the instruction-set variants (with the compiler's own flags and
    the extension's) and links their objects. A module older than those objects is deleted, so that
    setuptools, which compares only the sources' times with it, links it again."""

    def build_extension(self, ext):
        objects = build.build_isa_variant_objects(
            Path(self.build_temp).resolve() / "isa_variants", build.compile_args(with_cuda)["cxx"],
            base_flags=list(self.compiler.compiler_so[1:]), stale_module=self.get_ext_fullpath(ext.name),
            verbose=self.verbose)
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


setup(
    ext_modules=[
        extension_type(
            name="lstm_ext._C",
            sources=build.sources(with_cuda, relative_to=ROOT),
            extra_compile_args=build.compile_args(with_cuda),
            extra_link_args=build.link_args(),
            py_limited_api=False,
        )
    ],
    cmdclass={"build_ext": BuildExtensionWithIsaVariants},
)
