# `make demo` and `make test` set everything up on a fresh machine: they create .venv and
# install the project into it once (a second run installs nothing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/quickstart.py

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

bench: $(STAMP)
	$(PY) -m fusejit bench

lint: $(STAMP)
	$(PY) -m ruff check fusejit tests bench examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
