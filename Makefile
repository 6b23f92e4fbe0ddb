# ragserve: `make run` serves the chat over the bundled sample corpus; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamps are named after the dependency list, so editing pyproject.toml re-installs and an
# unchanged one never does. `make run` installs only what serving needs; `make test` adds the
# dev tools and the llama.cpp backend, which pip builds from source (PyPI has no wheel for it).
HASH := $(shell sha1sum pyproject.toml | cut -c1-12)
STAMP := $(VENV)/.installed-$(HASH)
DEV_STAMP := $(VENV)/.installed-dev-$(HASH)

# llama.cpp's default native build segfaults at the first token on this CPU family; a
# portable AVX2 build runs. pip caches the built wheel, so the ~4 minute build happens once
# (only for `make test` or `pip install '.[llama]'`: the default extractive reader needs no LLM).
export CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: run test install ingest-sample serve lint format clean

run: $(STAMP)
	$(VENV)/bin/ragserve ingest samples/corpus/
	$(VENV)/bin/ragserve serve

test: $(DEV_STAMP)
	$(PY) -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3
	# CPU torch first: asked for later by a dependency, pip would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	rm -f $(VENV)/.installed-*
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks training
	$(VENV)/bin/ruff format --check src tests benchmarks training

format: $(DEV_STAMP)
	$(VENV)/bin/ruff format src tests benchmarks training
	$(VENV)/bin/ruff check --fix src tests benchmarks training

clean:
	rm -rf .ragserve
