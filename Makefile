# Two entry points: `make demo` and `make test`. Both build .venv from the constraints and
# install nothing outside this folder. `make browser` (optional) installs Debian's chromium
# for the one test that drives the Serve web page, `make prometheus` Debian's Prometheus and
# promtool for the metrics tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs

.PHONY: install demo lint test test-fast test-cluster browser prometheus clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# --no-cache-dir: no second copy of the ~4.5 GB of wheels (torch's CUDA libraries are most of
# it) written to ~/.cache/pip, outside this folder.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --no-cache-dir -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job on an embedded local Ray, sized to a few minutes on 2 CPU cores: one
# `modresnet pipeline` (a 4-trial ASHA search on 4,000 images; its best configuration
# retrained with Ray Train, 2 workers, at the `demo` preset's budget: the `fast` recipe on the
# `debug` flavor, 12,000 images, 5 epochs; tested, registered, gated and made champion), then
# serve the champion, classify the whole test set over HTTP and close with a summary.
DEMO := demo-$(shell date +%Y%m%d-%H%M%S)

demo: install
	@echo "== 1/2 pipeline: search (4 ASHA trials, 4,000 images, 3 epochs at most), retrain the best"
	@echo "       (Ray Train, 2 workers, 12,000 images, 5 epochs), test, register, gate, promote"
	@$(BIN)/modresnet pipeline run $(DEMO) --preset demo --space jobs/pipeline/demo_space.yaml \
		--search-subset 4000 --samples 4 --max-epochs 3 --concurrent 2 --workers 2 \
		--promote direct --storage $(RUNS)
	@echo
	@echo "== 2/2 serve: the champion, models:/$(DEMO)@champion, over HTTP (Ray Serve)"
	@$(BIN)/python -m serve.demo models:/$(DEMO)@champion --storage $(RUNS) \
		--pipeline $(RUNS)/$(DEMO) --n 8

# Static checks, first in `make test` (and so in CI): ruff (lint and format), then mypy, strict
# on the core and plain on the Ray and Serve edges.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict modresnet
	$(BIN)/mypy jobs serve

# The unit tier spread over every core (pytest-xdist: its tests are small and independent);
# integration and e2e in one process, since their training runs and Ray clusters already use
# every core (measured on 2 cores: integration took 441 s under `-n 2`, 345 s in one process).
test: install lint
	$(BIN)/python -m pytest tests/unit -n auto
	$(BIN)/python -m pytest tests/integration tests/e2e

# The quick tier, tests/unit/ (a few minutes on 2 cores): tests that need neither Ray nor the
# data set; the conftest makes the data set unreachable here and refuses a unit test that asks
# for it or for Ray, so a test cannot drift into the wrong tier.
test-fast: install
	MODRESNET_TEST_TIER=fast $(BIN)/python -m pytest tests/unit -n auto -q -p no:cacheprovider

# A real local Ray cluster (head + 2 worker raylets, token auth) driven through the CLI.
test-cluster: install
	$(BIN)/python -m pytest tests/e2e/test_cluster.py -x -q

# Debian's chromium for tests/e2e/serve's web-page test (Playwright drives it; no browser
# download). This changes the system, so it is never a side effect of demo or test.
browser:
	@if [ -x /usr/bin/chromium ]; then echo "chromium is installed: /usr/bin/chromium"; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends chromium; \
	else echo "no apt-get here: install a Chromium at /usr/bin/chromium yourself" >&2; exit 1; fi

# Debian's prometheus package (prometheus and promtool) for tests/unit/test_prometheus_rules.py and
# the test that scrapes a real `modresnet serve`. Changes the system, like `browser`.
prometheus:
	@if [ -x /usr/bin/promtool ] && [ -x /usr/bin/prometheus ]; then \
		echo "prometheus is installed: /usr/bin/prometheus, /usr/bin/promtool"; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends prometheus; \
	else echo "no apt-get here: install Prometheus with promtool in /usr/bin yourself" >&2; exit 1; fi

clean:
	rm -rf $(VENV)
