# Two commands do everything on a fresh machine:
#   make demo   create .venv, install, build the bundled sample catalog's index, start the web app
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vsearch-installed
# The test suite's own model plugin (test-tiny): `make test` installs it beside vsearch, so CLI
# subprocesses and worker processes see it too; `make demo` and users' installs do not need it.
TEST_PLUGIN := tests/plugins/vsearch_test_models
TEST_STAMP := $(VENV)/.vsearch-test-models-installed
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

$(TEST_STAMP): $(STAMP) $(TEST_PLUGIN)/pyproject.toml
	$(BIN)/python -m pip install --quiet -c constraints.txt -e $(TEST_PLUGIN)
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python app.py

# Formatting and lint first (ruff, configured in pyproject.toml), then the tests.
test: $(TEST_STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) index/default index/sample-catalog artifacts .pytest_cache $(TEST_PLUGIN)/*.egg-info
