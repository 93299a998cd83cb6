# AI Platform: the command index. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run stop services test lint format bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements/base.txt requirements/dev.txt requirements/local.txt devtools/install_local.py \
		devtools/fetch_tokenizers.py apps/llm/tokenizer_files.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m devtools.install_local
	$(PY) -m devtools.fetch_tokenizers var/tiktoken
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the pinned requirements (the local model's first build takes minutes)

run: $(STAMP) ## Start embedded Postgres+Valkey, migrate, seed the demo, run web, workers, beat, Flower
	$(PY) -m devtools.run

stop: $(STAMP) ## Stop the embedded Postgres and Valkey that `make run` started
	$(PY) -m devtools.run --stop

test: $(STAMP) ## Run the whole test suite against embedded services (started and stopped here)
	$(PY) -m devtools.testrun $(ARGS)

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) ## Run the benchmarks (JSON on stdout; a few minutes)
	$(PY) -m bench.submission
	$(PY) -m bench.worker_pool
	$(PY) -m bench.delivery
	$(PY) -m bench.admission
	$(PY) -m bench.ratelimit
	$(PY) -m bench.cache
	$(PY) -m bench.semantic
	$(PY) -m bench.semantic_quality
	$(PY) -m bench.validation
	$(PY) -m bench.local_model
	$(PY) -m bench.fallback
	$(PY) -m bench.observability

clean: ## Remove .venv (keeps .devdata, your database)
	rm -rf $(VENV)
