# The two set-up commands of the README:
#   make demo   install everything, start a local Prefect server + worker and the sandbox,
#               register the example apps and deploy `hello` with the live step view
#   make test   install everything the tests need and run them (what CI runs)
#
# Everything runs from a virtual environment of the project's own, .venv: the system python3
# of Debian and Ubuntu is externally managed (PEP 668) and refuses `pip install`. Where its
# venv module is missing (Debian's python3-venv), it is installed first, as the sandbox
# installs its Debian packages.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# The oldest Prefect the pin in pyproject.toml allows (`prefect>=3.9,<3.10`); `make test` takes
# the newest. `make unit-oldest` runs the unit tests (the seam's among them) against the oldest.
PREFECT_OLDEST ?= 3.9.0
OLDEST ?= .venv-oldest

.PHONY: install venv demo test unit unit-oldest lint bench clean-local

$(PY):
	$(PYTHON) -m venv $(VENV) || { \
	  rm -rf $(VENV) && echo "installing Debian's python3-venv (python3 has no venv module)" && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
	  $(PYTHON) -m venv $(VENV); }

venv: $(PY)

# pip runs again only when the project's dependencies change (a stamp in the virtualenv)
$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed
	$(PY) -m deploy_runs.sandbox install

demo: install
	$(PY) -m deploy_runs.cli demo

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest

unit:
	$(PY) -m pytest tests/unit

unit-oldest: $(VENV)/.installed
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --disable-pip-version-check -e . \
	  'prefect==$(PREFECT_OLDEST)' 'pytest>=8' 'pytest-timeout>=2.3'
	$(OLDEST)/bin/python -m pytest tests/unit

bench: install
	cd bench && ../$(PY) deploy.py && ../$(PY) controls.py && ../$(PY) logs.py && ../$(PY) redeploy.py && ../$(PY) scale.py && ../$(PY) abuse.py && ../$(PY) faults.py

# Stop the local Prefect server/worker and the sandbox started by `make demo`.
clean-local:
	$(PY) -m deploy_runs.cli prefect down
	$(PY) -m deploy_runs.cli sandbox down
