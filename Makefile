# Set-up is implicit: every target creates .venv from requirements-lock.txt (every dependency,
# the optional extras included) when it is missing or older than the lock file / pyproject.toml.
# Nothing here calls apt-get unless asked: `make system-data` (as root) installs the one system
# package scaleshift can use, Debian's dataset-fashion-mnist (the real images of the
# fashion_mnist tasks; their tests skip without it). CI (.ci/run) calls it before `make test`.
VENV   := .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed
# two pytest workers (pytest-xdist), one per core; a test file stays on one worker
PARALLEL := -n 2 --dist loadfile
FASHION_PACKAGE := dataset-fashion-mnist

.PHONY: demo test test-fast system-data clean-venv

$(STAMP): requirements-lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-lock.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scaleshift demo

test: $(STAMP)
	@if command -v dpkg >/dev/null && ! dpkg -s $(FASHION_PACKAGE) >/dev/null 2>&1; then \
	  echo "note: $(FASHION_PACKAGE) is not installed, its tests skip (sudo make system-data)"; fi
	$(VENV)/bin/python -m pytest $(PARALLEL)

# the fast tier: every test not marked slow (pyproject.toml says what slow means)
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest $(PARALLEL) -m "not slow"

system-data:
	@if command -v dpkg >/dev/null && dpkg -s $(FASHION_PACKAGE) >/dev/null 2>&1; then \
	  echo "$(FASHION_PACKAGE): installed"; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "system-data needs apt-get (Debian/Ubuntu). Elsewhere put the four fashion-mnist idx" \
	       "files in a folder and pass data_root=FOLDER (scaleshift datasets shows the layout)" >&2; \
	  exit 1; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "system-data installs a Debian package: run it as root (sudo make system-data)" >&2; \
	  exit 1; \
	else \
	  apt-get install -y -q $(FASHION_PACKAGE) || \
	    (apt-get update -q && apt-get install -y -q $(FASHION_PACKAGE)); \
	fi

clean-venv:
	rm -rf $(VENV)
