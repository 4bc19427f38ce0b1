# The README's two commands: `make demo` and `make test`. Each creates (or reuses) a virtual environment,
# installs PyTorch first (the CPU wheel unless CUDA=1), then pfm itself.
PYTHON ?= python3
VENV ?= .venv
CUDA ?= 0
TORCH_CPU ?= torch==2.13.0
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.pfm-installed

.PHONY: setup demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(CUDA),1)
	$(BIN)/python -m pip install --quiet "torch>=2.4,<2.15"
else
	$(BIN)/python -m pip install --quiet $(TORCH_CPU)
endif
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# ESM C (pfm embed --provider esmc, tests/test_embeddings_esmc.py): esm without its requirements, which would
	# replace the CPU torch; what it imports for ESM C comes with the esmc extra, part of dev
	$(BIN)/python -m pip install --quiet --no-deps "esm==3.2.1.post1"
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/pfm-train experiment=demo

# pytest exits 5 when it collects nothing; that is a failure here, like any other non-zero status.
test: $(STAMP)
	@$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports --no-cache

clean:
	rm -rf outputs multirun .pytest_cache
