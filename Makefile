# ResGen: `make demo` (train codec + generator on the embedded digits, sample, evaluate)
# and `make test`. Both create .venv and install the pinned dependencies when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP_FLAGS ?= --disable-pip-version-check --progress-bar off

.PHONY: install demo test test-slow clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -e ".[dev,plots]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m resgen_image.demo --out outputs/demo/image

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf outputs lightning_logs .pytest_cache
