# Two entry points: `make demo` and `make test`. Both build .venv from the constraints.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-cluster clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	@# The Serve web-page test drives Debian's chromium through Playwright (no browser download).
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ) && $$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; } || \
		echo "warning: /usr/bin/chromium missing; tests/test_serve.py skips its browser test"
	touch $(STAMP)

install: $(STAMP)

# The main job on an embedded local Ray: train (Ray Train, 2 workers), a tiny ASHA search,
# then serve the trained model and classify real test images over HTTP.
DEMO := demo-$(shell date +%Y%m%d-%H%M%S)

demo: install
	$(BIN)/modresnet train --preset demo --workers 2 --storage runs --name $(DEMO)
	$(BIN)/modresnet tune --preset demo --subset 500 --set data.val_subset=200 --samples 4 --max-epochs 2 --concurrent 2 --storage runs --name tune-$(DEMO)
	$(BIN)/python -m serve.demo runs/$(DEMO) --n 8

test: install
	$(BIN)/python -m pytest tests

# A real local Ray cluster (head + 2 worker raylets, token auth) driven through the CLI.
test-cluster: install
	$(BIN)/python -m pytest tests/test_cluster.py -x -q

clean:
	rm -rf $(VENV)
