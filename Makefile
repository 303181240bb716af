# Two entry points for a fresh machine: `make demo` (the whole pipeline) and `make test`.
# Both create .venv when missing and install the package into it.
# TORCH_SPEC pins the CPU build that lies on this machine's disk; override it elsewhere,
# e.g. `make test TORCH_SPEC=torch` to take whatever your platform's index serves.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.minillama-installed

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/minillama pipeline $(ARGS)

test: $(STAMP)
	sh tests/setup_browser.sh
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

clean:
	rm -rf $(VENV) build src/*.egg-info
