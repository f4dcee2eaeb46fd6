# The two contract commands: `make demo` and `make test`. Both set everything up on a fresh machine.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
IMAGE ?= imgcls:latest
BASE_IMAGE ?= debian:bookworm-slim
EXTRA_CA_BUNDLE ?=
BAKE_WEIGHTS ?= 1
PYTEST_ARGS ?=

.PHONY: setup test demo image bench audit lint clean

$(UV):
	python3 -m pip --version >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip; }
	PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --user --quiet uv

# Python env from the lock, plus a JDK for the model server (javac builds its readiness /ping plugin)
# and Chromium, in which the insights report test opens report.html offline.
setup: $(UV)
	@command -v javac >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless; }
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(UV) sync --frozen

# ruff's security rules (flake8-bandit) on the code that ships and the scripts; each exception is a `# noqa: Sxxx - why`.
lint: setup
	$(UV) run ruff check --select S container/code client/src bench scripts

test: lint
	$(UV) run pytest $(PYTEST_ARGS)

# Advisories for every locked package; exit 2 and "NOT AUDITED" when no advisory service answers.
audit: setup
	$(UV) run python scripts/audit.py

demo: setup
	$(UV) run bash scripts/demo.sh

image:
	bash scripts/build_image.sh "$(IMAGE)" "$(BASE_IMAGE)" "$(EXTRA_CA_BUNDLE)" "$(BAKE_WEIGHTS)"

# Every bench/*.py script in its short mode (BENCH_SHORT=1); each leaves its ratios as JSON in
# build/bench/ (bench/results_file.py), and bench/summary.py gathers them into one Markdown file.
bench: setup
	@rm -rf build/bench && mkdir -p build/bench
	@for script in bench/*.py; do \
	  case "$$script" in bench/summary.py|bench/results_file.py) continue;; esac; \
	  echo "== $$script"; \
	  BENCH_SHORT=1 BENCH_RESULTS_DIR=build/bench $(UV) run python "$$script" || exit 1; \
	done
	$(UV) run python bench/summary.py build/bench build/bench-summary.md

clean:
	rm -rf demo_out .pytest_cache
