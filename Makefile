# phoneprov — every target creates/uses .venv and installs what it needs, idempotently.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ROOTS  := certs/build/mozilla-roots.pem
RUFF_FLAGS := --line-length 110 --target-version py311
LINT_DIRS  := agent hal boot certs tools tests

.PHONY: all venv demo test test-fast bench lint format certs clean

all: test

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[lab,dev]'
	touch $@

venv: $(STAMP)

# The device image's shipped anchors: Mozilla's root set, copied from certifi at build time.
$(ROOTS): $(STAMP) certs/build.py
	$(BIN)/python -m certs.build

certs: $(ROOTS)

demo: $(STAMP) $(ROOTS)
	$(BIN)/phoneprov demo
	$(BIN)/phoneprov demo --fault datastore
	$(BIN)/phoneprov demo --fault chain
	$(BIN)/phoneprov demo --fault registrar
	$(BIN)/phoneprov demo --rig

test: $(STAMP) $(ROOTS) lint
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) $(ROOTS)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP) $(ROOTS)
	$(BIN)/python -m tools.bench

lint: $(STAMP)
	$(BIN)/ruff check $(RUFF_FLAGS) --select E,F,W,I,B,UP,SIM,RUF --ignore E501,RUF001,RUF002,RUF003 $(LINT_DIRS)
	$(BIN)/ruff format $(RUFF_FLAGS) --check $(LINT_DIRS)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check $(RUFF_FLAGS) --select I --fix $(LINT_DIRS)
	$(BIN)/ruff format $(RUFF_FLAGS) $(LINT_DIRS)

clean:
	rm -rf $(VENV) certs/build .pytest_cache .mypy_cache .hypothesis

# make install / make uninstall (DESTDIR, PREFIX): the phone's venv, unit, config example, gadget, udev
include boot/install.mk
