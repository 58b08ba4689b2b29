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
	$(PY) -m ioladder bench --quick --out bench-out

# The benchmark (docs/benchmarks.md explains every column). RUNG, DOCS_PROFILE overridable.
RUNG ?= saea
DOCS_PROFILE ?= docs

bench: $(STAMP)
	$(PY) -m ioladder bench --full --out bench-out/full

bench-echo: $(STAMP)
	$(PY) -m ioladder bench --profile echo --servers $(RUNG),asyncio,uvloop,c-epoll --out bench-out/echo

bench-docs: $(STAMP)
	$(PY) -m ioladder bench --profile $(DOCS_PROFILE) --out bench-out/docs
	$(PY) -m ioladder.bench.report bench-out/docs/results.json --docs docs/benchmarks.md --docs-command "make bench-docs DOCS_PROFILE=$(DOCS_PROFILE)"

clean:
	rm -rf $(VENV) build *.egg-info ioladder/*/*.so ioladder/*.so
