# Two entry points for a fresh machine: `make demo` (the whole pipeline) and `make test`.
# Both create .venv when missing and install the package into it.
# TORCH_SPEC pins the CPU build that lies on this machine's disk; override it elsewhere,
# e.g. `make test TORCH_SPEC=torch` to take whatever your platform's index serves.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.minillama-installed

# The oldest versions pyproject.toml admits: Python 3.10 and torch 2.9 (from PyPI: a CUDA build,
# about 3 GB). Not part of CI, which runs the pinned CPU build above.
FLOOR_PYTHON ?= python3.10
FLOOR_TORCH ?= torch==2.9.1

# llama-cpp-python (dev extra; checks the GGUF export) comes as source: pip compiles llama.cpp once
# (about 15 CPU-minutes) and caches the wheel, so later installs take seconds. Only the library is
# built (no multimodal mtmd), for any AVX2 CPU: a native build on a CPU with AMX (Sapphire Rapids
# and later) uses llama.cpp's AMX kernels, which crash on q8_0 / q4_0 files (llama.cpp issue 20824).
# pip keys its cache by version, not by these flags: after changing them, pip cache remove llama_cpp_python.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF

.PHONY: demo test test-floor lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/minillama pipeline $(ARGS)

test: $(STAMP)
	sh tests/setup_browser.sh
	MINILLAMA_REQUIRE_LLAMA_CPP=1 $(BIN)/python -m pytest -q $(ARGS)

test-floor:
	test -x .venv-floor/bin/python || $(FLOOR_PYTHON) -m venv .venv-floor
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" .venv-floor/bin/python -m pip install --quiet "$(FLOOR_TORCH)" -e ".[dev]"
	sh tests/setup_browser.sh
	.venv-floor/bin/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples experiments

clean:
	rm -rf $(VENV) .venv-floor build src/*.egg-info
