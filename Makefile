# Two entry points from a fresh clone: `make demo` (a search on the embedded synthetic data) and
# `make test`. Both create .venv and install raytower into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch. Here pip finds torch 2.13.0 (CPU) on the local disk; elsewhere on a
# CPU-only Linux box add the CPU index: make TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install demo test test-fast test-slow clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/raytower tune --data synthetic --space quick --num-samples 8 \
		--max-epochs 6 --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: install
	$(BIN)/python -m pytest -m "not slow" -q --durations=10

# The fast tier, for the edit-test loop: plain PyTorch and unit tests, nothing that starts Ray or is
# slow (tests/conftest.py fails a test that starts Ray without the ray marker). `make test` is what CI runs.
# Two pytest-xdist workers of one torch thread each share the session's cache (tests/conftest.py);
# `make test` runs in one process: its Ray tests start clusters of their own.
test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow and not ray" -q

# pytest exits 5 when no test carries the slow marker: an empty tier is not a failure.
test-slow: install
	$(BIN)/python -m pytest -m slow -q || [ $$? -eq 5 ]

clean:
	rm -rf $(VENV) runs .pytest_cache
