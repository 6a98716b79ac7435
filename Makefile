# `make run` sets everything up on a fresh machine and starts the server; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODELS := yolov3-tiny yolov4-tiny

.PHONY: run dev test install install-dev models system-deps bench bench-engines bench-ceiling clean

run: models
	$(PY) -m yoso.server

dev: models
	. ./dev_env_vars && $(PY) -m yoso.server

test: install-dev models system-deps
	$(PY) -m pytest

bench: install-dev models
	$(PY) -m bench --markdown

bench-engines: install-dev models
	$(PY) -m bench.engines --markdown

bench-ceiling: install-dev models
	$(PY) -m bench.ceiling

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

models: install
	$(PY) -m yoso models pull $(MODELS)

# Test-only system packages: a real Prometheus (and promtool) from Debian.
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing Debian's prometheus package for the tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q prometheus; }

clean:
	rm -rf $(VENV) .pytest_cache
