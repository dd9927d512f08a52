# wdys: `make run` sets up and runs the benchmark on the embedded defaults; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SQL    ?= select * from metrics

# Offline-friendly Prefect and Hugging Face settings (no telemetry, no UI assets, no hub calls),
# declared once in core/settings.py (`python -m core.settings` prints them; standard library
# only, so any python3 reads them); a value already in the environment wins.
LOCAL_DEFAULTS := $(shell $(PYTHON) -m core.settings)
$(foreach setting,$(LOCAL_DEFAULTS),$(eval export $(subst =, ?= ,$(setting))))

# A local Prefect server for deployments: SQLite under .prefect/, on 127.0.0.1 only.
PREFECT_PORT ?= 4200
SERVER_ENV := PREFECT_HOME=$(CURDIR)/.prefect PREFECT_LOGGING_LEVEL=INFO
API_ENV := PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api

.PHONY: setup run test lint format query bench server deploy worker wheel clean vllm

$(BIN)/.installed: requirements.lock
	@echo "Installing pinned dependencies into $(VENV) (a few minutes the first time)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq -r requirements.lock
	touch $@

# The project itself, editable: `.venv/bin/wdys` runs this checkout's code from any folder.
$(BIN)/wdys: $(BIN)/.installed pyproject.toml
	$(BIN)/pip install -qq --no-deps --no-build-isolation -e .
	touch $@

setup: $(BIN)/.installed $(BIN)/wdys

# `wdys run` adds the command line's own settings (core/settings.py).
run: setup
	$(BIN)/python -m wdys run $(ARGS)

test: setup
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

server: setup
	$(SERVER_ENV) $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

deploy: setup
	$(API_ENV) $(BIN)/python -m deployments.deploy $(ARGS)

worker: setup
	$(API_ENV) PREFECT_LOGGING_LEVEL=INFO $(BIN)/prefect worker start --pool $${WDYS_WORK_POOL:-wdys-process}

# vLLM for `vllm:` describers, in an environment of its own (it pins its own torch, which differs from
# ours): never in .venv or requirements.lock. $WDYS_VLLM may name another `vllm` executable instead.
VLLM_VERSION ?= 0.33.0
.venv-vllm/bin/vllm:
	@echo "Installing vllm==$(VLLM_VERSION) into .venv-vllm (several GB, a few minutes)..."
	$(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/pip install -qq "vllm==$(VLLM_VERSION)"

vllm: .venv-vllm/bin/vllm
	.venv-vllm/bin/vllm --version

bench: setup
	$(BIN)/python -m perf.bench $(ARGS)

query: setup
	$(BIN)/python -m wdys query "$(SQL)"

# The installable package (console script `wdys`), built offline with the environment's setuptools.
wheel: setup
	$(BIN)/pip wheel -q --no-deps --no-build-isolation . -w dist

clean:
	rm -rf $(VENV) data .wdys .prefect build dist
