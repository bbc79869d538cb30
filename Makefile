# tuneforge: every target works on a fresh machine and is idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY := artifacts/tiny-llama
TINY_GPT_OSS := artifacts/tiny-gpt-oss
TORCH_CPU := torch==2.13.0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup artifacts demo test test-slow lint format bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# Machines without an NVIDIA GPU get the small CPU build; GPU users bring their own torch.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -q $(TORCH_CPU); fi
	$(BIN)/python -m pip install -q -e ".[dev]" -c constraints.txt
	touch $(STAMP)

artifacts: $(TINY)/config.json $(TINY_GPT_OSS)/config.json

# One run builds both (they share the tokenizer); the gpt-oss reference weights land next to it.
$(TINY)/config.json $(TINY_GPT_OSS)/config.json &: scripts/make_tiny_artifacts.py | $(STAMP)
	$(BIN)/python scripts/make_tiny_artifacts.py --out $(TINY) --gpt-oss-out $(TINY_GPT_OSS)

demo: setup artifacts
	$(BIN)/python scripts/demo.py

test: setup artifacts
	$(BIN)/python -m pytest -q tests

test-slow: setup artifacts
	$(BIN)/python -m pytest -q -m slow tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: setup
	$(BIN)/python -m tuning.tools.docs_gen

bench: setup artifacts
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/fail_fast.py

clean:
	rm -rf $(VENV) artifacts demo_output
