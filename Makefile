# mailpacer: the two commands a newcomer needs are `make demo` and `make test`.
# Both do their own set-up on a fresh Debian 12 machine (run as root).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The venv is rebuilt when pyproject.toml changes (stamp named after its hash).
STAMP_HASH := $(shell sha1sum pyproject.toml | cut -c1-12)
RUN_STAMP  := $(VENV)/.installed-run-$(STAMP_HASH)
TEST_STAMP := $(VENV)/.installed-test-$(STAMP_HASH)

DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest deps venv clean help

help:
	@echo "make demo   - set up .venv and run 'mailpacer demo' (sink + 10,000-recipient campaign)"
	@echo "make test   - set up .venv and Debian packages, then ruff, mypy, ansible-lint, pytest"

$(BIN)/python:
	@bash tests/setup/ensure-venv.sh "$(PYTHON)" "$(VENV)"

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e .
	@rm -f $(VENV)/.installed-run-*; touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	@rm -f $(VENV)/.installed-test-* $(VENV)/.installed-run-*; touch $@ $(RUN_STAMP)

venv: $(RUN_STAMP)

demo: $(RUN_STAMP)
	$(BIN)/mailpacer demo $(DEMO_ARGS)

deps:
	@bash tests/setup/install-debian-packages.sh
	@bash tests/hosts/install-deps.sh
	@bash tests/setup/install-prometheus.sh
	@bash tests/setup/start-mariadb.sh

lint: $(TEST_STAMP)
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

pytest: $(TEST_STAMP) deps
	MAILPACER_REQUIRE_POSTFIX=1 MAILPACER_REQUIRE_TESTHOST=1 MAILPACER_REQUIRE_PROMETHEUS=1 \
		MAILPACER_REQUIRE_MARIADB=1 $(BIN)/pytest $(PYTEST_ARGS)

test: deps $(TEST_STAMP)
	$(MAKE) --no-print-directory lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info agent/*.egg-info
