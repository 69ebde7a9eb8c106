# phi3v — set-up and common tasks. `make test` works on a fresh clone of a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first: a bare `pip install torch` (or a dependency asking for it) pulls a multi-GB CUDA build
# from the public index. TORCH_SPEC pins the build; TORCH_INDEX is the package index it comes from
# (empty = this machine's pip configuration). From the public index the CPU wheel needs
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
# and on a GPU machine `make install-gpu` (= TORCH_SPEC=torch from the default index).
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
STAMP       := $(VENV)/.installed
# Playwright's browser download was tried (tests/browser.py --install): `make test` tries it once, `make browser` again.
BROWSER_STAMP := $(VENV)/.browser-tried
# The torch request last installed: a changed TORCH_SPEC or TORCH_INDEX rewrites it, and the rule
# below reinstalls torch (FORCE makes make look at it every time; the file changes only on a change).
TORCH_STAMP := $(VENV)/.torch-spec
TORCH_WANT  := $(strip $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)))

.PHONY: install install-gpu browser train test test-fast lint bench clean FORCE

$(PY):
	$(PYTHON) -m venv $(VENV)

# No record yet (a fresh venv, or one made before this rule): a plain install, a no-op when torch is
# there. A different request: torch is replaced, even where the installed build already satisfies the
# spec (`torch` is satisfied by the CPU build; the point of asking is the CUDA one).
$(TORCH_STAMP): FORCE | $(PY)
	@if [ ! -f $@ ]; then \
		$(PIP) install --quiet $(TORCH_WANT) && echo "$(TORCH_WANT)" > $@; \
	elif [ "$$(cat $@)" != "$(TORCH_WANT)" ]; then \
		echo "torch: $$(cat $@) -> $(TORCH_WANT)"; \
		$(PIP) install --quiet --force-reinstall --no-deps $(TORCH_WANT) && \
		$(PIP) install --quiet $(TORCH_WANT) && echo "$(TORCH_WANT)" > $@; \
	fi

FORCE:

$(STAMP): $(TORCH_STAMP) pyproject.toml setup.py phi3v/modeling/_hd_canvas.c
	$(PIP) install --quiet -e ".[dev,qlora,app]"
# W&B's sweep engine (tests/test_sweep.py). It declares numpy<2, yet works with numpy 2; a plain install would
# downgrade numpy and break pandas. Its real dependencies come with the dev extra (pyproject.toml).
	$(PIP) install --quiet --no-deps "sweeps==0.3.0"
	touch $(STAMP)

install: $(STAMP)

# A CUDA build of torch from the default index (then the package, as `make install`).
install-gpu:
	$(MAKE) install TORCH_SPEC=torch TORCH_INDEX=

# The offline demo: tiny model + synthetic catalogue on CPU. Extra overrides: make train ARGS="trainer.max_steps=50"
train: $(STAMP)
	$(PY) train.py $(ARGS)

# The browser test (tests/test_app_browser.py) drives the chromium tests/browser.py finds: PHI3V_CHROMIUM, then
# chromium/google-chrome on PATH, then Playwright's own download. When there is none, that download is tried once
# (user-level, never root; where it is blocked it fails in seconds) and the test is skipped, saying how to get one.
test: $(STAMP) $(BROWSER_STAMP)
	$(PY) -m pytest -q

$(BROWSER_STAMP): | $(STAMP)
	$(PY) tests/browser.py --install
	@touch $@

# Try Playwright's chromium download again (e.g. now that the network allows it).
browser: $(STAMP)
	$(PY) tests/browser.py --install
	@touch $(BROWSER_STAMP)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check phi3v tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/processor.py
	$(PY) benchmarks/dataloader.py
	$(PY) benchmarks/scaling.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
