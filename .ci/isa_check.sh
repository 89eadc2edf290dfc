#!/usr/bin/env bash
# The CPU kernels on emulated older CPUs: qemu-user runs the CPU equivalence tests on a SandyBridge
# model (AVX, no AVX2 or FMA: ATen and lstm_ext must pick their baseline builds, and an AVX2 or FMA
# instruction reached anywhere, e.g. a vector build's copy of an inline function that the baseline
# code calls, kills the process with SIGILL) and on a Haswell model (AVX2 and FMA, no AVX-512: the AVX2
# build must run, without an AVX-512 instruction). Installs qemu-user-static with apt-get where
# qemu-x86_64 is missing, and fails, never skips, when the check cannot run.
# Usage: .ci/isa_check.sh [python]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
QEMU_PACKAGE=qemu-user-static
# Every test here runs in the emulated process (a subprocess would run natively, so the test that starts
# one per build is left out); about 3 minutes per CPU model.
TESTS=(tests/test_equivalence.py tests/test_cpu_variants.py -k "not test_every_cpu_build_matches_nn_lstm")
RUN_TIMEOUT_S=1200

fail() { echo "FAIL: $*"; exit 1; }

[[ $(uname -m) == x86_64 && $(uname -s) == Linux ]] ||
  fail "the instruction-set check runs x86-64 Linux builds under qemu-x86_64; this is $(uname -s) $(uname -m)"

find_qemu() { command -v qemu-x86_64-static || command -v qemu-x86_64 || true; }
QEMU=$(find_qemu)
if [[ -z "$QEMU" ]]; then
  echo "== qemu-x86_64 not found: installing $QEMU_PACKAGE with apt-get"
  command -v apt-get >/dev/null || fail "no qemu-x86_64, and no apt-get to install $QEMU_PACKAGE"
  SUDO=()
  [[ $(id -u) -eq 0 ]] || SUDO=(sudo -n)
  export DEBIAN_FRONTEND=noninteractive
  # The package lists may be missing or stale: update them when the first try fails.
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$QEMU_PACKAGE" ||
    { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$QEMU_PACKAGE"; } ||
    fail "could not install $QEMU_PACKAGE with apt-get (see its output above)"
  QEMU=$(find_qemu)
  [[ -n "$QEMU" ]] || fail "$QEMU_PACKAGE is installed but neither qemu-x86_64-static nor qemu-x86_64 is on PATH"
fi
echo "qemu: $QEMU ($("$QEMU" --version | head -n 1))"

# The emulator must enforce each model: a CPU without AVX2, FMA or AVX-512 must kill the process on
# them (else a passing run proves nothing), and Haswell must run AVX2 and FMA (qemu 7.2 or newer).
CANARY_DIR=$(mktemp -d)
trap 'rm -rf "$CANARY_DIR"' EXIT
cat >"$CANARY_DIR/canary.c" <<'EOF'
#include <string.h>
int main(int argc, char** argv) {
  if (argc > 1 && strcmp(argv[1], "avx2") == 0) __asm__ volatile("vpaddd %ymm0, %ymm0, %ymm0");
  if (argc > 1 && strcmp(argv[1], "fma") == 0) __asm__ volatile("vfmadd231ps %xmm0, %xmm0, %xmm0");
  if (argc > 1 && strcmp(argv[1], "avx512") == 0) __asm__ volatile("vpaddd %zmm0, %zmm0, %zmm0");
  return 0;
}
EOF
"${CC:-cc}" -O0 "$CANARY_DIR/canary.c" -o "$CANARY_DIR/canary" || fail "could not compile the instruction canary"
canary() {  # canary CPU_MODEL INSTRUCTION_SET runs|sigill
  local rc
  # In a subshell with its stderr dropped: the shell's own "Illegal instruction" line goes there too.
  rc=$( ("$QEMU" -cpu "$1" "$CANARY_DIR/canary" "$2"; echo $?) 2>/dev/null )
  if [[ $3 == runs && $rc -ne 0 ]]; then
    fail "qemu's $1 model does not run $2 instructions (exit $rc): this qemu cannot emulate it (7.2 or newer can)"
  elif [[ $3 == sigill && $rc -ne 132 ]]; then
    fail "qemu's $1 model ran a $2 instruction (exit $rc, not SIGILL's 132): it does not enforce the CPU model"
  fi
}
canary SandyBridge avx2 sigill
canary SandyBridge fma sigill
canary Haswell avx2 runs
canary Haswell fma runs
canary Haswell avx512 sigill
echo "qemu enforces the models: SandyBridge dies on AVX2 and FMA, Haswell runs them and dies on AVX-512"

run_model() {  # run_model CPU_MODEL ATEN_CAPABILITY LSTM_EXT_KERNELS
  echo "== qemu-x86_64 -cpu $1: ATen's $2 and lstm_ext's $3 build expected; ${TESTS[*]}"
  local start rc=0
  start=$(date +%s)
  # qemu warns once per CPU feature that its TCG does not model (x2apic, tsc-deadline, ...): dropped.
  timeout "$RUN_TIMEOUT_S" "$QEMU" -cpu "$1" "$PY" .ci/isa_emulated_tests.py "$2" "$3" "${TESTS[@]}" \
    2> >(grep -v "TCG doesn't support requested feature" >&2) || rc=$?
  echo "-- $1: exit $rc in $(( $(date +%s) - start )) s"
  case $rc in
    0) ;;
    132) fail "SIGILL on the emulated $1: code for an instruction set that CPU lacks was reached" ;;
    124) fail "the tests on the emulated $1 ran past ${RUN_TIMEOUT_S} s" ;;
    *) fail "the CPU tests on the emulated $1 failed (exit $rc)" ;;
  esac
}
run_model SandyBridge DEFAULT baseline
run_model Haswell AVX2 avx2
echo "the baseline build ran on SandyBridge and the AVX2 build on Haswell"
