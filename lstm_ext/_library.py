"""Loads the compiled operator library lstm_ext._C, building it on the fly from a source checkout
when no compiled module is installed."""

from __future__ import annotations

import os
import sys
import types

from . import _build


def _build_on_the_fly() -> types.ModuleType:
    import torch
    from torch.utils import cpp_extension

    with_cuda = _build.want_cuda(torch)
    if with_cuda:
        _build.configure_cuda_environment(torch)
    build_dir = _build.ROOT / "build" / ("jit-cuda" if with_cuda else "jit-cpu")
    build_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"lstm_ext: no compiled module found; building the {'CUDA' if with_cuda else 'CPU-only'} extension "
        f"now with torch.utils.cpp_extension.load (ninja) in {build_dir}. This takes a few minutes the "
        "first time; `pip install --no-build-isolation .` installs it for good.",
        file=sys.stderr,
        flush=True,
    )
    args = _build.compile_args(with_cuda)
    isa_objects = _build.build_isa_variant_objects(build_dir / "isa_variants", args["cxx"],
                                                   stale_module=build_dir / "_C.so")
    return cpp_extension.load(
        name="_C",
        sources=_build.sources(with_cuda),
        extra_cflags=args["cxx"],
        extra_cuda_cflags=args.get("nvcc"),
        extra_ldflags=_build.link_args() + isa_objects,
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        is_python_module=True,
        verbose=os.environ.get("LSTM_EXT_VERBOSE_BUILD") == "1",
    )


def _load_from_path(path: str) -> types.ModuleType:
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.ExtensionFileLoader("lstm_ext._C", path)
    spec = importlib.util.spec_from_file_location("lstm_ext._C", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules["lstm_ext._C"] = module
    return module


def load() -> types.ModuleType:
    """The compiled module: $LSTM_EXT_LIBRARY if set (a specific build, e.g. the sanitizer build of
    .ci/sanitized_emulation.sh), else the installed lstm_ext._C, else one built on the fly."""
    override = os.environ.get("LSTM_EXT_LIBRARY")
    if override:
        return _load_from_path(override)
    try:
        from . import _C  # type: ignore[attr-defined]

        return _C
    except ImportError:
        if not _build.CSRC.is_dir():
            raise
        return _build_on_the_fly()
