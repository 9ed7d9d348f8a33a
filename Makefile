# The two quickstart commands: `make demo` (main job on the embedded digits) and `make test`.
# Each creates .venv and installs what it needs on its own.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/diffunlearn unlearn configs/digits/ddpm_sfron.yaml --output out/demo --overwrite

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

.PHONY: install demo test test-slow
