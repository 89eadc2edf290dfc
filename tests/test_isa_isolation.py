"""The AVX2 and AVX-512 builds of the CPU kernels keep their code to themselves: in the built library, no
function outside them holds an instruction beyond x86-64's baseline. Each is compiled apart with its
instruction-set flags and every symbol it defines renamed with its suffix and made local but its entry
point (lstm_ext/_build.py: ISA_VARIANTS), so an inline function of ATen, c10 or std that it emits cannot
be the copy the linker keeps for the baseline code. .ci/isa_check.sh runs the CPU tests on emulated CPUs
without AVX2 and without AVX-512 to the same end."""

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lstm_ext import _library

_spec = importlib.util.spec_from_file_location(
    "lstm_ext_build", Path(__file__).resolve().parent.parent / "lstm_ext" / "_build.py")
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)

pytestmark = pytest.mark.skipif(not _build.isa_variants_built(),
                                reason="the AVX2 and AVX-512 builds exist on x86-64 Linux only")

# Mnemonics of instructions that x86-64's baseline (SSE2) lacks and a compiler emits for AVX, AVX2, FMA,
# AVX-512 (VEX/EVEX-encoded: v..., opmask k...), BMI/BMI2, LZCNT, POPCNT and MOVBE. tzcnt is left out:
# baseline code uses it for __builtin_ctz, and a CPU without BMI runs it as bsf.
_BEYOND_BASELINE = re.compile(r"^(v|k)[a-z0-9]+$|^(andn|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|shlx"
                              r"|shrx|lzcnt|popcnt|movbe)$")
_VECTOR_REGISTER = {"avx2": "%ymm", "avx512": "%zmm"}


def _functions_beyond_baseline(library: str) -> dict[str, tuple[int, set[str]]]:
    """{function symbol: (instructions beyond the baseline, their registers seen)} from objdump."""
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed: the instruction-set variants are built with objcopy from it"
    listing = subprocess.run([objdump, "-d", "--no-show-raw-insn", library], check=True, capture_output=True,
                             text=True).stdout
    found: dict[str, tuple[int, set[str]]] = {}
    function = None
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if header:
            function = header.group(1)
            continue
        fields = line.split("\t")
        if function is None or len(fields) < 2 or not fields[1].strip():
            continue
        mnemonic = fields[1].split()[0]
        if _BEYOND_BASELINE.match(mnemonic):
            count, registers = found.get(function, (0, set()))
            registers |= set(re.findall(r"%[xyz]mm", fields[1]))
            found[function] = (count + 1, registers)
    return found


def _demangled(symbol: str) -> str:
    filt = shutil.which("c++filt")
    if not filt:
        return symbol
    return subprocess.run([filt, symbol], capture_output=True, text=True).stdout.strip() or symbol


@pytest.fixture(scope="module")
def functions_beyond_baseline():
    return _functions_beyond_baseline(_library.load().__file__)


def _variant_of(symbol: str):
    for variant in _build.ISA_VARIANTS:
        if symbol.endswith(variant.symbol_suffix) or symbol == variant.entry_symbol:
            return variant.namespace
    return None


def test_no_function_shared_with_the_baseline_code_holds_vector_instructions(functions_beyond_baseline):
    leaked = sorted(f for f in functions_beyond_baseline if _variant_of(f) is None)
    assert not leaked, (
        f"{len(leaked)} functions that are not the AVX2/AVX-512 builds' own hold instructions beyond x86-64's "
        "baseline: a CPU without them would die with SIGILL there. "
        + "; ".join(f"{_demangled(f)} ({functions_beyond_baseline[f][0]} instructions)" for f in leaked[:8]))


@pytest.mark.parametrize("namespace", [v.namespace for v in _build.ISA_VARIANTS])
def test_each_vector_build_is_in_the_library_with_its_registers(functions_beyond_baseline, namespace):
    # The check above sees the vector builds' code: their functions carry their suffix and use their
    # registers (ymm for AVX2, zmm for AVX-512).
    registers = set().union(*(regs for f, (_, regs) in functions_beyond_baseline.items()
                              if _variant_of(f) == namespace))
    assert _VECTOR_REGISTER[namespace] in registers, (
        f"no function of the {namespace} build uses {_VECTOR_REGISTER[namespace]} registers; registers seen: "
        f"{sorted(registers)}")
    if namespace == "avx2":
        assert "%zmm" not in registers, "the AVX2 build holds AVX-512 instructions"
