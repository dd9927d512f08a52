# wdys: `make run` sets up and runs the benchmark on the embedded defaults; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SQL    ?= select * from metrics

# Offline-friendly Prefect and Hugging Face settings (no telemetry, no UI assets, no hub calls).
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_UI_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_LOGGING_LEVEL ?= WARNING
export TOKENIZERS_PARALLELISM ?= false
# torch's OpenMP threads sleep instead of spinning while they wait: the same speed on an idle
# machine, up to 3x faster on a shared one (docs/BENCHMARKS.md).
export OMP_WAIT_POLICY ?= PASSIVE

# A local Prefect server for deployments: SQLite under .prefect/, on 127.0.0.1 only.
PREFECT_PORT ?= 4200
SERVER_ENV := PREFECT_HOME=$(CURDIR)/.prefect PREFECT_LOGGING_LEVEL=INFO
API_ENV := PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api

.PHONY: setup run test lint format query bench server deploy worker clean

$(BIN)/.installed: requirements.lock
	@echo "Installing pinned dependencies into $(VENV) (a few minutes the first time)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq -r requirements.lock
	touch $@

setup: $(BIN)/.installed

# The in-process temporary Prefect server logs spurious errors when it shuts down; hide only those.
run: setup
	PREFECT_SERVER_LOGGING_LEVEL=CRITICAL $(BIN)/python -m flows.benchmark $(ARGS)

test: setup
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

server: setup
	$(SERVER_ENV) $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

deploy: setup
	$(API_ENV) $(BIN)/python -m deployments.deploy $(ARGS)

worker: setup
	$(API_ENV) PREFECT_LOGGING_LEVEL=INFO $(BIN)/prefect worker start --pool $${WDYS_WORK_POOL:-wdys-process}

bench: setup
	$(BIN)/python -m benchmarks.bench $(ARGS)

query: setup
	$(BIN)/python -m storage.query "$(SQL)"

clean:
	rm -rf $(VENV) data .wdys .prefect
