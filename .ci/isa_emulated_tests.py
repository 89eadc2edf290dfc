"""Run by .ci/isa_check.sh under `qemu-x86_64 -cpu MODEL`: checks that ATen and lstm_ext picked the builds
that this CPU model implies, then runs the given pytest arguments in this same process (a subprocess
would be started natively, outside the emulator).

Usage: isa_emulated_tests.py ATEN_CAPABILITY LSTM_EXT_KERNELS [pytest arguments...]
"""

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's lstm_ext, whatever the venv has installed
os.chdir(ROOT)

start = time.time()
import torch  # noqa: E402

import lstm_ext  # noqa: E402

if len(sys.argv) < 3:
    raise SystemExit(__doc__)
want_aten, want_kernels, pytest_args = sys.argv[1], sys.argv[2], sys.argv[3:]
aten, kernels = torch.backends.cpu.get_cpu_capability(), lstm_ext.cpu_kernels()
print(f"ATen's CPU capability: {aten}, lstm_ext.cpu_kernels(): {kernels} (lstm_ext from {Path(lstm_ext.__file__).parent}, "
      f"imported in {time.time() - start:.0f} s)", flush=True)
if (aten, kernels) != (want_aten, want_kernels):
    raise SystemExit(f"FAIL: expected ATen's {want_aten} and lstm_ext's {want_kernels} build on this CPU, "
                     f"got {aten} and {kernels}")

# nn.LSTM, the tests' reference, would run oneDNN's LSTM, whose JIT-compiled code crashes (SIGSEGV) under
# qemu 7.2's AVX2 emulation; ATen's own LSTM is the same reference without it.
torch.backends.mkldnn.enabled = False

import pytest  # noqa: E402

sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *pytest_args]))
