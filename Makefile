# phi3v — set-up and common tasks. `make test` works on a fresh clone of a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first: here 2.13.0 resolves to a local CPU wheel, while a bare `pip install torch` (or a
# dependency asking for it) pulls a multi-GB CUDA build. On a GPU machine: make TORCH_SPEC=torch test
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install train test test-fast lint bench clean

$(STAMP): pyproject.toml setup.py phi3v/modeling/_hd_canvas.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev,qlora]"
# W&B's sweep engine (tests/test_sweep.py). It declares numpy<2, yet works with numpy 2; a plain install would
# downgrade numpy and break pandas. Its real dependencies come with the dev extra (pyproject.toml).
	$(PIP) install --quiet --no-deps "sweeps==0.3.0"
	touch $(STAMP)

install: $(STAMP)

# The offline demo: tiny model + synthetic catalogue on CPU. Extra overrides: make train ARGS="trainer.max_steps=50"
train: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

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
