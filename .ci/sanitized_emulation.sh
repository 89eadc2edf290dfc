#!/usr/bin/env bash
# Builds the extension (CPU-only: the emulated CUDA kernels are CPU code) with AddressSanitizer and
# UndefinedBehaviorSanitizer, then runs the emulated-CUDA, op, CPU work-split and huge-page buffer tests
# against that build. Any out-of-bounds access or undefined behaviour in the kernels or the recurrence
# fails the run.
# Usage: .ci/sanitized_emulation.sh [python]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
BUILD_DIR=build/sanitized
mkdir -p "$BUILD_DIR"
# The sanitizer runtimes must come first in the process: preload them into python for the build (which
# loads the library it built) and for the tests.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

echo "== building the ASan+UBSan extension in $BUILD_DIR"
FORCE_CPU=1 "$PY" - "$BUILD_DIR" <<'PYEOF'
import importlib.util, sys, time
from torch.utils import cpp_extension
# The same source list as the real build, read without importing lstm_ext (which loads its library).
spec = importlib.util.spec_from_file_location("lstm_ext_build", "lstm_ext/_build.py")
_build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(_build)
sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
cflags = ["-O1"] + _build.openmp_flags() + sanitize
start = time.time()
# The AVX2 and AVX-512 kernels are compiled apart (their symbols made local) and linked as objects.
isa_objects = _build.build_isa_variant_objects(f"{sys.argv[1]}/isa_variants", cflags,
                                               stale_module=f"{sys.argv[1]}/_C.so")
module_path = cpp_extension.load(
    name="_C", sources=_build.sources(with_cuda=False),
    extra_cflags=cflags, extra_ldflags=_build.link_args() + sanitize + isa_objects,
    build_directory=sys.argv[1], is_python_module=False, is_standalone=False, verbose=False)
print(f"built in {time.time() - start:.0f} s")
PYEOF

LIB=$(ls "$BUILD_DIR"/_C*.so | head -n 1)
echo "== running the emulated-CUDA (variants and persistent kernels too), emulation, op, work-split, GEMM and huge-page buffer tests under ASan+UBSan ($LIB)"
# The GEMM contract's reruns under the other CPU builds are left out: each is a whole process again.
LSTM_EXT_LIBRARY="$LIB" "$PY" -m pytest -q -p no:cacheprovider --capture=sys tests/test_emulated_cuda.py \
  tests/test_cuda_emulation.py tests/test_persistent_emulation.py tests/test_ops.py tests/test_cpu_work_split.py \
  tests/test_huge_page_buffers.py \
  tests/test_cpu_gemm.py "tests/test_cpu_variants.py::test_every_block_shape_matches_nn_lstm" \
  tests/test_variants.py -k "not under_every_cpu_build and (not test_variants or emulated or functional)"
