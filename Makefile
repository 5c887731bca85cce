# Set-up is implicit: every target creates .venv from requirements-lock.txt when it is missing
# or older than the lock file / pyproject.toml.
VENV   := .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

.PHONY: demo test clean-venv

$(STAMP): requirements-lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-lock.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scaleshift demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

clean-venv:
	rm -rf $(VENV)
