# Two entry points, as the README says: `make run` and `make test`.
# torch is installed first, pinned to the CPU build on this disk, so that the project's
# own install finds it satisfied and never pulls a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: install prepare run test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test,ray]'
	touch $@

# The data, the tokenizer and a torch.compile cache of the shipped train.py (once; later
# calls see them prepared): a fresh workspace's first runs start from that cache.
prepare: install
	$(VENV)/bin/pairlab prepare --compile-seed

run: prepare
	$(VENV)/bin/pairlab

# One pytest worker per core: tests keep to their own tmp dirs, tmux servers, sockets and
# ports, so they run side by side; worksteal evens out the few long ones.
test: install
	$(PY) -m pytest -q -n auto --dist worksteal --durations=25

# The edit-test cycle: everything but the end-to-end runs (training through the evaluator,
# tmux, Ray, the browser, the benches); CI runs the whole suite.
test-fast: install
	$(PY) -m pytest -q -n auto --dist worksteal --durations=10 -m "not e2e"

bench: install
	$(PY) bench/train_throughput.py
	$(PY) bench/loop_efficiency.py

clean:
	rm -rf $(VENV) build *.egg-info
