# Set-up is implicit: every target creates .venv from requirements-lock.txt when it is missing
# or older than the lock file / pyproject.toml.
VENV   := .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

.PHONY: demo test clean-venv

$(STAMP): requirements-lock.txt pyproject.toml
	@# Real offline data: Fashion-MNIST from Debian (skipped with a warning where apt is absent)
	@if command -v dpkg >/dev/null && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	    (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null) || \
	    echo "warning: could not install dataset-fashion-mnist; fashion_mnist needs a root"; \
	  else echo "warning: run 'sudo apt-get install dataset-fashion-mnist' for the fashion_mnist dataset"; fi; \
	fi
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
