# ragserve: `make run` serves the chat over the bundled sample corpus; `make test` runs the tests
# (installing what they need first); `make test-fast` runs the pure-logic tier in about a minute.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamps are named after the dependency list, so editing pyproject.toml re-installs and an
# unchanged one never does. `make run` installs what serving needs, the local reader's
# llama.cpp backend included (pip builds it from source: PyPI has no wheel for it); `make test`
# adds the dev tools. scripts/install.sh compiles llama.cpp while everything else downloads.
HASH := $(shell sha1sum pyproject.toml | cut -c1-12)
STAMP := $(VENV)/.installed-$(HASH)
DEV_STAMP := $(VENV)/.installed-dev-$(HASH)

# llama.cpp's default native build segfaults at the first token on this CPU family; a
# portable AVX2 build runs. The multimodal library (LLAVA_BUILD) is not built: text needs none
# of it, and it is 18% of the compile (247 s -> 203 s on 2 idle cores). pip caches the built
# wheel, so the compile happens once.
export CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: run test test-fast browser-deps install lint format clean

run: $(STAMP)
	$(VENV)/bin/ragserve ingest samples/corpus/
	$(VENV)/bin/ragserve serve

test: $(DEV_STAMP) browser-deps
	$(PY) -m pytest -q

# No model loads, no servers, no datasets: tests/unit and every test marked `fast`.
test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m fast

# Debian's Chromium for the widget's browser tests; does nothing once it is installed.
browser-deps:
	bash scripts/install_browser_deps.sh

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(PYTHON)
	rm -f $(VENV)/.installed-*
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# lint-imports checks the layer contracts in pyproject.toml (a stage imports only the ones below).
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks research training
	$(VENV)/bin/ruff format --check src tests benchmarks research training
	$(VENV)/bin/lint-imports

format: $(DEV_STAMP)
	$(VENV)/bin/ruff format src tests benchmarks training
	$(VENV)/bin/ruff check --fix src tests benchmarks training

clean:
	rm -rf .ragserve
