# The two set-up commands of the README:
#   make demo   install everything, start a local Prefect server + worker and the sandbox,
#               register the example apps and deploy `hello` with the live step view
#   make test   install everything the tests need and run them (what CI runs)
PYTHON ?= python3

.PHONY: install demo test unit lint bench clean-local

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PYTHON) -m deploy_runs.sandbox install

demo: install
	$(PYTHON) -m deploy_runs.cli demo

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

unit:
	$(PYTHON) -m pytest tests/unit

bench: install
	cd bench && $(PYTHON) deploy.py && $(PYTHON) controls.py && $(PYTHON) logs.py && $(PYTHON) redeploy.py && $(PYTHON) scale.py && $(PYTHON) abuse.py

# Stop the local Prefect server/worker and the sandbox started by `make demo`.
clean-local:
	$(PYTHON) -m deploy_runs.cli prefect down
	$(PYTHON) -m deploy_runs.cli sandbox down
