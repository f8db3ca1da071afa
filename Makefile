# Two commands for a newcomer (see README.md): `make demo` and `make test`.
# Both create .venv and install the project with its extras first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,demo,bench,postgres,deploy,torch,flower]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/trapdoor demo

lint: install
	$(PY) -m ruff check .

typecheck: install
	$(PY) -m mypy trapdoor bench

test: lint typecheck
	$(PY) -m pytest

bench: install
	$(VENV)/bin/trapdoor bench crypto_bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
