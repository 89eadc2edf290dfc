# The two commands of the README, and what they need. Each target sets up what is missing on a fresh
# machine: a venv in .venv with torch and the tools, then the extension built into the source tree.
#   make bench   the benchmark sweep (quick grid), table on screen, CSV/JSON/PNG in bench-results/
#   make test    the test suite
# Knobs: PYTHON (the interpreter that makes the venv), FORCE_CPU=1 (CPU-only build), MAX_JOBS.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
# onnx, onnxscript and onnxruntime: the optional "onnx" extra (torch.onnx.export), which the tests run.
TOOLS := ninja "setuptools>=64" wheel pytest pytest-benchmark hypothesis expecttest numpy matplotlib tqdm \
  onnx onnxscript onnxruntime
export MAX_JOBS ?= 2

DEPS_STAMP := $(VENV)/.lstm_ext-deps
BUILD_STAMP := build/.lstm_ext-built
BUILD_LOG := build/extension-build.log
SOURCES := $(shell find csrc -type f) setup.py pyproject.toml lstm_ext/_build.py

.PHONY: bench test build venv clean gpu-check

bench: $(BUILD_STAMP)
	$(PY) benchmarks/sweep.py --quick --out bench-results

test: $(BUILD_STAMP)
	$(PY) -m pytest tests

build: $(BUILD_STAMP)

venv: $(DEPS_STAMP)

$(DEPS_STAMP): Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)" $(TOOLS)
	touch $@

# pip's own output goes to the log; the log is shown when the build fails.
$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	@mkdir -p build
	@echo "Building lstm_ext (log: $(BUILD_LOG)) ..."
	@start=$$(date +%s); \
	if $(PY) -m pip install --disable-pip-version-check --no-build-isolation --no-deps -v -e . > $(BUILD_LOG) 2>&1; then \
	  echo "Built lstm_ext in $$(( $$(date +%s) - start )) s: $$(grep -m1 'lstm_ext: building' $(BUILD_LOG))"; \
	else \
	  tail -n 80 $(BUILD_LOG); echo "lstm_ext build FAILED (full log: $(BUILD_LOG))"; exit 1; \
	fi
	@touch $@

clean:
	rm -rf build lstm_ext/_C*.so *.egg-info

# On a machine with an NVIDIA GPU: build for that GPU's architecture only (all cores, or MAX_JOBS when given),
# run the tests, the quick sweep and the recurrence paths (persistent, alternating, nn.LSTM) on CUDA, report
# in gpu-check/<UTC time>/report.md; at most 10 minutes.
# PY=python3 runs it with that interpreter's torch instead of the venv; GPU_CHECK_ARGS=--dry-run prints the plan.
gpu-check: $(if $(filter $(VENV)/bin/python,$(PY)),$(DEPS_STAMP))
	$(PY) benchmarks/gpu_check.py $(if $(filter file,$(origin MAX_JOBS)),,--jobs $(MAX_JOBS)) $(GPU_CHECK_ARGS)
