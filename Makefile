# The README's two commands: `make run` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test tools lint typecheck pytest openapi bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/eventrelay serve

test: $(STAMP) tools lint typecheck pytest

# Programs some tests drive: Debian's Chromium (the console's browser tests)
# and promtool (package prometheus: the alert rules' unit tests). Install what
# is missing when apt-get can (as root); otherwise say so (under CI=true those
# tests then fail rather than skip).
TOOLS ?= /usr/bin/chromium:chromium /usr/bin/promtool:prometheus
tools:
	@missing=""; for tool in $(TOOLS); do test -x "$${tool%%:*}" || missing="$$missing $${tool#*:}"; done; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; } \
		|| echo "Not installed:$$missing (apt-get install$$missing; some tests need them)"

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q -n auto

openapi: $(STAMP)
	$(BIN)/python -m app.openapi > openapi/openapi.json

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .import_linter_cache
