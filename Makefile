# The two commands the README gives:
#   make setup   install everything into .venv and run the main job on the embedded model
#   make test    lint, type-check and run the whole test suite
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup install main test lint

setup: install main

install:
	tools/install.sh $(VENV)

main:
	$(BIN)/python -m pytest -m gguf --model smollm2-135m

lint:
	$(BIN)/ruff check pytest_minerva tests benchmarks tools examples
	$(BIN)/mypy

test:
	tools/test.sh $(VENV)
