# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The environment is .venv; torch is installed first and pinned (a CPU wheel), then everything else
# under constraints.txt so pip never resolves an unpinned torch.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := $(shell grep -E '^torch==' constraints.txt)
PYTEST_ARGS ?=

.PHONY: demo test test-all mutation env clean

env: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[ros,distributed,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/metarl-robot demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Mutation testing of the runtime, control loop, export/verify, evaluation and algorithms (docs/testing.md).
# Long: minutes to hours per group on two cores. GROUPS="runtime loop" limits it.
mutation: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[mutation]"
	$(BIN)/python -m tests.mutation $(GROUPS)

clean:
	rm -rf $(VENV) runs build *.egg-info
