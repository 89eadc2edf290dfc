"""Builds lstm_ext._C with torch.utils.cpp_extension and ninja: a CUDAExtension when torch has CUDA and a
toolkit is found (or FORCE_CUDA=1), a CPU-only CppExtension otherwise (or FORCE_CPU=1).
The sources, flags and toolkit discovery live in lstm_ext/_build.py, shared with the on-the-fly build."""

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
    cmdclass={"build_ext": BuildExtension},
)
