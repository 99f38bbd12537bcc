# `make demo` and `make test` set everything up in ./.venv (pinned by constraints.txt).
# `make test-interop` builds ./.venv-interop (torch 2.14.1 with torchvision, timm and
# transformers, wandb and MLflow, about 6.5 GB; pinned by constraints-interop.txt) and runs
# tests/interop/.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
INTEROP_VENV  ?= .venv-interop
INTEROP_STAMP := $(INTEROP_VENV)/.installed

.PHONY: install demo test test-interop lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

$(INTEROP_STAMP): pyproject.toml constraints-interop.txt
	$(PYTHON) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/python -m pip install --quiet --no-cache-dir \
		--constraint constraints-interop.txt --editable '.[dev,interop,wandb,mlflow]'
	touch $(INTEROP_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kdforge demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -n 2 --durations=15

test-interop: $(INTEROP_STAMP)
	KDFORGE_INTEROP=1 $(INTEROP_VENV)/bin/pytest -n 2 --durations=10 tests/interop

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/kdforge bench

clean:
	rm -rf $(VENV) $(INTEROP_VENV) .pytest_cache .ruff_cache
