# The two commands a newcomer needs: `make demo` and `make test` (see README.md).
# Everything they need is installed here, into .venv, from PyPI.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(wildcard ioladder/*.c ioladder/*.h ioladder/*/*.c ioladder/*/*.h)

.PHONY: test demo venv lint bench bench-echo bench-docs bench-http ensure-wrk clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check ioladder tests

test: $(STAMP) lint ensure-wrk
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

# The HTTP bench (issue 6 part 3): wrk against `ioladder serve --app http` on every rung, beside
# nginx, raw uvloop/asyncio + httptools and uvicorn; writes bench-out/http and the HTTP section
# of docs/benchmarks.md (HTTP_ARGS: more options, e.g. "--nice -10 --repeat 5"). Needs Debian's
# wrk and nginx: `ensure-wrk` installs them when absent.
HTTP_ARGS ?=

bench-http: $(STAMP) ensure-wrk
	$(PY) -m ioladder bench --profile http $(HTTP_ARGS) --out bench-out/http --docs docs/benchmarks.md --docs-command "make bench-http$(if $(HTTP_ARGS), HTTP_ARGS='$(HTTP_ARGS)')"

# wrk and nginx from Debian's packages (`wrk`, `nginx`: the binary package on bookworm and
# later; `nginx-light` only adds modules) when either is absent. Needs root and apt-get; without
# them it says so and the HTTP bench skips what is missing instead of failing.
ensure-wrk:
	@if command -v wrk >/dev/null 2>&1 && { command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; }; then \
	  exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "ensure-wrk: wrk or nginx is missing and cannot be installed here (needs root and apt-get); the HTTP bench will skip what is missing"; \
	  exit 0; fi; \
	echo "ensure-wrk: installing Debian's wrk and nginx"; \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk nginx; } \
	  || echo "ensure-wrk: apt-get failed; the HTTP bench will skip what is missing"

clean:
	rm -rf $(VENV) build *.egg-info ioladder/*/*.so ioladder/*.so
