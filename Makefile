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

# headless Chromium (Debian's package) for the gallery's browser test: a system dependency, installed when root
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "make install: headless Chromium is missing (tests/test_gallery_browser.py needs it): run as root: apt-get install -y chromium"

install: $(VENV)/.installed chromium

demo: $(VENV)/.installed
	$(VENV)/bin/diffunlearn unlearn configs/digits/ddpm_sfron.yaml --output out/demo --overwrite

# the default suite in TEST_WORKERS processes (pytest-xdist; each test runs one torch thread, so 2 workers use both
# cores of a 2-core machine); a test module stays on one worker (--dist loadscope): its module fixtures are built
# once, and the debug_launcher tests (one fixed rendezvous port) never overlap
TEST_WORKERS ?= auto
test: $(VENV)/.installed chromium
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

# the package as `pip install` gives it: README.md's Python snippet and one CLI command from a folder outside the
# checkout, on the built wheel (installed with --target; its dependencies come from $(VENV))
wheel-check: $(VENV)/.installed
	VENV=$(VENV) .ci/wheel-check

# the README's robustness tables (side by side, DDPM and SD); RT of class 7 (--rt auto: the base recipe without
# class 7) is trained once into the cache (10.6 min on 2 cores)
robustness: $(VENV)/.installed
	OMP_NUM_THREADS=2 $(PY) eval/robustness_benchmark.py --config configs/digits/benchmark_ddpm.yaml \
		--output out/robustness_ddpm --rt auto
	OMP_NUM_THREADS=2 $(PY) eval/robustness_benchmark.py --config configs/digits/benchmark_sd.yaml \
		--output out/robustness_sd

.PHONY: install chromium demo test test-slow wheel-check robustness
