# InstructLoop: `make demo` runs the app, `make test` runs every test. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
PORT ?= 8501
export DATABASE_URL ?= sqlite:///data/instructloop.sqlite3
PYTEST_ARGS ?=

.PHONY: install system-deps demo demo-data app worker test test-fast bench lint clean help

help:
	@echo "make demo   install, migrate, pretrain the tiny demo model (cached), seed the demo project, run the app on http://localhost:$(PORT) with a job worker"
	@echo "make worker run a job worker alone (python -m rlhf.worker: runs the jobs queued on the Jobs page)"
	@echo "make test   install, start a throwaway PostgreSQL, run all tests on SQLite and PostgreSQL"
	@echo "make bench  print the benchmark figures"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a bare torch requirement would pull a multi-GB CUDA build.
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

system-deps:
	@scripts/system_deps.sh

demo-data: install
	$(PY) -m db upgrade
	$(PY) -m rlhf.demo

# The app and, beside it, a worker that runs the jobs queued on the Jobs page (each as its own process); the
# worker stops (terminating its running jobs) when the app does. WORKER=0 runs the app alone. The URL is printed
# last, once the app answers (Streamlit's own banner is off: offline it adds a "Did not auto detect external IP"
# warning that reads like an error; the worker's own lines go to its log file, each job's to the Jobs page);
# SIGN_IN=1 (make demo) adds the demo accounts.
WORKER ?= 1
SIGN_IN ?= 0
app: install
	@set -u; worker=; app=; home=$${INSTRUCTLOOP_HOME:-runs}; \
	trap '[ -n "$$app" ] && kill $$app 2>/dev/null; [ -n "$$worker" ] && kill $$worker 2>/dev/null; wait 2>/dev/null' EXIT; \
	if [ "$(WORKER)" = 1 ]; then mkdir -p "$$home"; $(PY) -m rlhf.worker >> "$$home/worker.log" 2>&1 & worker=$$!; fi; \
	$(VENV)/bin/streamlit run labeling_ui/app.py --server.port $(PORT) --server.headless true \
		--browser.gatherUsageStats false --logger.hideWelcomeMessage true & app=$$!; \
	if $(PY) scripts/wait_for_app.py http://localhost:$(PORT); then \
	  printf '\n  InstructLoop is up: open http://localhost:$(PORT) (from another machine: http://<this host>:$(PORT))\n'; \
	  if [ "$(SIGN_IN)" = 1 ]; then printf '  and sign in as\n    admin / admin-pass          (labeling, jobs, leaderboard, everything)\n    annotator / annotator-pass  (labeling only)\n'; fi; \
	  if [ -n "$$worker" ]; then printf '  The job worker logs to %s/worker.log.\n' "$$home"; fi; \
	  printf '  Ctrl-C stops the app%s.\n\n' "$$( [ -n "$$worker" ] && echo ' and the worker')"; fi; \
	wait $$app

worker: install
	$(PY) -m rlhf.worker

demo: demo-data
	@$(MAKE) --no-print-directory app SIGN_IN=1

# A throwaway PostgreSQL on a free loopback port (unless TEST_DATABASE_URL is given), pytest on
# SQLite and PostgreSQL, the server stopped afterwards; exits with pytest's status.
test: install system-deps
	@set -u; pgdir=$$(mktemp -d /tmp/instructloop-pg.XXXXXX); chmod 755 $$pgdir; own=0; \
	if [ -z "$${TEST_DATABASE_URL:-}" ]; then \
	  port=$$($(PY) -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'); \
	  url=$$(scripts/pg_test_server.sh start $$pgdir/data $$port) || { echo "could not start PostgreSQL"; exit 1; }; \
	  own=1; export TEST_DATABASE_URL=$$url; \
	fi; \
	echo "PostgreSQL: $$TEST_DATABASE_URL"; \
	$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	[ $$own = 1 ] && scripts/pg_test_server.sh stop $$pgdir/data; rm -rf $$pgdir; exit $$status

bench: install
	$(PY) bench/db_throughput.py
	$(PY) bench/pretrain_throughput.py
	$(PY) bench/rlhf_steps.py
	$(PY) bench/ui_vote_latency.py

lint: install
	$(VENV)/bin/ruff check db rlhf pretrain labeling_ui tests bench

clean:
	rm -rf $(VENV) data runs exports test-artifacts .pytest_cache
