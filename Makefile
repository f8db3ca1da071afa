# Two commands for a newcomer (see README.md): `make demo` and `make test`.
# Both create .venv and install the project with its extras first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browsers screenshots demo test lint typecheck bench clean

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

# The consoles' browser tests (tests/browser) drive Debian's Chromium through Playwright;
# this installs it from Debian's packages when it is missing (as root, or through sudo).
browsers:
	@command -v chromium >/dev/null 2>&1 || sh scripts/install-chromium.sh

# Refresh the console screenshots that docs/OPERATIONS.md shows.
screenshots: install browsers
	TRAPDOOR_SCREENSHOTS=docs/screenshots $(PY) -m pytest tests/browser -q

test: lint typecheck browsers
	$(PY) -m pytest

bench: install
	$(VENV)/bin/trapdoor bench crypto_bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
