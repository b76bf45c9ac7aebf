# Two commands do all the set-up on a fresh machine (see README):
#   make serve   install, start the service, building the models it lacks while it serves
#   make test    install, then lint, type-check and run every test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS ?= cpu,dev

.PHONY: install build serve test lint typecheck unit clean loadtest bench

install: $(STAMP)

# uv installs the 7 GB of wheels (torch's CUDA 13 stack among them) in parallel: about 30 s where
# pip took 260 s on the 2-core host. It reads UV_* variables, not pip's configuration: point
# UV_DEFAULT_INDEX / UV_INDEX at a private index, or `make install INSTALLER=pip` to use pip.
INSTALLER ?= uv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(INSTALLER),uv)
	$(BIN)/python -m pip install --disable-pip-version-check -q "uv>=0.13,<0.14"
	$(BIN)/uv pip install --python $(BIN)/python -q -e ".[$(EXTRAS)]"
else
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[$(EXTRAS)]"
endif
	touch $(STAMP)

build: install
	$(BIN)/tessera build
	$(BIN)/tessera calibrate --if-missing

# Serves as soon as the first model is built and calibrated; the others build and join meanwhile.
serve: install
	$(BIN)/tessera serve --build

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

LOADTEST_ARGS ?= --users 8 --spawn-rate 4 --duration 60s
loadtest: build
	$(BIN)/tessera loadtest --start $(LOADTEST_ARGS)

bench: build
	$(BIN)/tessera bench all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
	find model_repo -mindepth 2 -maxdepth 2 -type d -name '[0-9]*' -exec rm -rf {} +
