# The two commands a newcomer needs: `make demo` and `make test` (see README.md).
# Everything they need is installed here, into .venv, from PyPI.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(wildcard ioladder/*/*.c ioladder/*/*.h)

.PHONY: test demo venv lint bench bench-echo bench-docs clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check ioladder tests

test: $(STAMP) lint
	$(PY) -m pytest -q -ra

demo: $(STAMP)
	$(PY) -m ioladder demo

clean:
	rm -rf $(VENV) build *.egg-info ioladder/*/*.so ioladder/*.so
