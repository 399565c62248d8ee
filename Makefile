# Every target sets up .venv (with the project and its test, docs, mailman and
# postgresql extras) when it is missing or older than pyproject.toml.

PYTHON ?= python3
IMPL   ?= mailqueue
# Which GNU Mailman releases conformance-matrix runs (all, by default).
RELEASES ?=

# The reports of the full runs (fuzz, soak, crash-test, bench, cluster-test,
# conformance-matrix, mailman-plugin-test) go to build/reports, never over
# the copies in docs/ that the published pages show: make publish copies
# them there, when a run is one to publish.
REPORTS        ?= build/reports
FUZZ_REPORT    ?= $(REPORTS)/reliability-run.json
SOAK_REPORT    ?= $(REPORTS)/soak-run.json
CRASH_REPORT   ?= $(REPORTS)/crash-run.json
BENCH_REPORT   ?= $(REPORTS)/bench-run.json
CLUSTER_REPORT ?= $(REPORTS)/cluster-run.json
MATRIX_REPORT  ?= $(REPORTS)/conformance-matrix.json
PLUGIN_REPORT  ?= $(REPORTS)/mailman-plugin-run.json
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# WITH_COVERAGE=1 (CI sets it): the test runs (test, spec-postgresql,
# conformance) run under coverage, and coverage-report then combines what
# every process they started measured; so coverage needs no run of its own.
ifdef WITH_COVERAGE
RUN      := $(BIN)/coverage run
MEASURED := coverage-data
else
RUN      := $(BIN)/python
MEASURED :=
endif

.PHONY: help test strace crash-test coverage coverage-data coverage-report docs docs-check lint bench fuzz soak conformance conformance-results interop mailman-site-test \
	mailman-plugin-test mailman-plugin-full \
	spec-postgresql postgresql-server cluster-servers cluster-test conformance-matrix \
	publish isolation clean

help:
	@echo "make test   run the spec (docs/*.rst) and the tests"
	@echo "make docs   build the HTML documentation into build/html"
	@echo "make docs-check  load every page in headless Chromium, check links and search"
	@echo "make lint   check the code with ruff and mypy --strict"
	@echo "make coverage  branch coverage of mailqueue/ across every process the"
	@echo "            tests start (at least 100 %); HTML in build/coverage/html"
	@echo "make bench  what the queue costs, beside GNU Mailman and the bare system calls"
	@echo "make fuzz   the full hostile-file run (10,000+ cases, a few minutes);"
	@echo "            its figures go to $(FUZZ_REPORT)"
	@echo "make crash-test  every state a crash (a power loss) can leave, for every"
	@echo "            queue operation, recovered and checked; figures go to"
	@echo "            $(CRASH_REPORT)"
	@echo "make soak   the full kill -9 soak (10,000 messages, 250 runner kills) and"
	@echo "            churn; its figures go to $(SOAK_REPORT)"
	@echo "make conformance IMPL=NAME  run the spec against an implementation"
	@echo "                 (mailqueue, mailman, or package.module:adapter)"
	@echo "make interop     exchange queue files between mailqueue and GNU Mailman"
	@echo "make mailman-site-test  mailqueue's tools on a running GNU Mailman site"
	@echo "make mailman-plugin-test  mailqueue's Mailman plugin: Mailman's core, runners and"
	@echo "                 commands tests with and without it, and the hostile corpus in"
	@echo "                 a running Mailman both ways (figures: $(PLUGIN_REPORT))"
	@echo "make mailman-plugin-full  the whole of Mailman's own suite, with and without it"
	@echo "make conformance-matrix  the spec against every GNU Mailman 3 release, each in"
	@echo "                 its own venv under build/matrix; the table goes to"
	@echo "                 $(MATRIX_REPORT) (RELEASES=\"3.3.0 3.3.10\" for some)"
	@echo "make cluster-test  two hosts on a GlusterFS volume and PostgreSQL, one killed;"
	@echo "            its figures go to $(CLUSTER_REPORT)"
	@echo "make publish  copy the reports of those runs that are in $(REPORTS) into"
	@echo "            docs/, whose pages show them (make bench etc. write only to build/)"
	@echo "make isolation  the spec documents in reverse order in one process (make test"
	@echo "            runs them in order, and each alone)"
	@echo "make spec-postgresql  run the spec with its lists in a throwaway PostgreSQL"
	@echo "                 server (Debian's postgresql is installed if missing)"
	@echo "make clean  remove build output and the virtual environment"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs,mailman,postgresql]'
	touch $@

# It also writes the spec's conformance report for the reference, which
# make docs shows (so the spec is not run a second time for it).
test: $(STAMP) $(MEASURED) strace
	$(RUN) -m pytest --implementation=mailqueue --report-dir=build/conformance/mailqueue

# The command an implementer runs (mailqueue conformance ADAPTER), from here.
CONFORMANCE = $(RUN) -m mailqueue.conformance

conformance: $(STAMP) $(MEASURED)
	$(CONFORMANCE) $(IMPL) --report build/conformance/$(IMPL)

# The results the published docs show, from a real run of each shipped adapter:
# made again only when the spec or the code is newer than the report (so a
# `make conformance IMPL=mailman` just before `make docs` is not run twice).
# A non-conformant implementation still gets its table, so failures don't stop here.
CONFORMANCE_SOURCES := $(wildcard docs/*.rst mailqueue/*.py mailqueue/conformance/*.py) \
	conftest.py
conformance-results: build/conformance/mailqueue/report.json \
	build/conformance/mailman/report.json

# Exit status 1 with a report written is a result (a non-conformant
# implementation, whose table the docs show too); any other failure stops
# here.  Either way the run's output stays in run.log beside the report.
build/conformance/%/report.json: $(STAMP) $(CONFORMANCE_SOURCES) | $(MEASURED)
	@mkdir -p $(@D) && rm -f $@
	@echo "conformance of $*: the spec runs, its output goes to $(@D)/run.log"
	@status=0; $(CONFORMANCE) $* --report $(@D) > $(@D)/run.log 2>&1 || status=$$?; \
	tail -n 1 $(@D)/run.log; \
	if [ $$status -eq 1 ] && [ -f $@ ]; then \
		echo "$* does not conform (exit status 1): see $(CURDIR)/$(@D)/run.log"; \
	elif [ $$status -ne 0 ]; then \
		echo "the conformance run of $* failed (exit status $$status):" \
			"see $(CURDIR)/$(@D)/run.log" >&2; \
		rm -f $@; \
		exit 1; \
	fi

conformance-matrix: $(STAMP)
	$(BIN)/python tools/matrix/matrix.py --report $(MATRIX_REPORT) \
		$(if $(RELEASES),--releases $(RELEASES))

# Also part of make test (which is what CI runs).
interop: $(STAMP)
	$(BIN)/python -m pytest tests/interop -W ignore::DeprecationWarning

# A live GNU Mailman 3.3.10 site (its own venv, aiosmtpd on loopback) with
# mailqueue's tools at work on it; also part of make test.
mailman-site-test: $(STAMP)
	$(BIN)/python -m pytest tests/mailman_site -s -W ignore::DeprecationWarning

# mailqueue's GNU Mailman plugin (mailqueue/mailman.py), in GNU Mailman 3.3.10's
# own venv with this checkout's wheel; also part of make test (CI writes no report).
mailman-plugin-test: $(STAMP)
	MAILQUEUE_PLUGIN_REPORT=$(PLUGIN_REPORT) $(BIN)/python -m pytest tests/mailman_plugin \
		-W ignore::DeprecationWarning

mailman-plugin-full: $(STAMP)
	$(BIN)/python tests/mailman_plugin/mailman_suite.py --full --report build/mailman-plugin/full.json

# System packages come from Debian's archive, the one way every target gets
# them: $(call apt-install,CHECK,PACKAGE...) installs the packages unless the
# shell command CHECK succeeds (they are there), with one update of the
# package index and without the packages they merely recommend (a
# recommendation that matters is named).
apt-install = $(1) > /dev/null 2>&1 || { apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(2) > /dev/null; }

docs: $(STAMP) conformance-results
	@# graphviz's dot draws the pictures, in the fonts it recommends.
	@$(call apt-install,command -v dot,graphviz fonts-liberation2)
	@# From scratch: viewcode keeps any page newer than its module, stale or not.
	rm -rf build/html
	$(BIN)/python -m sphinx -W -n --keep-going -q -b html docs build/html
	@echo "The documentation is in $(CURDIR)/build/html/index.html"

docs-check: docs
	@$(call apt-install,command -v chromium,chromium)
	$(BIN)/python tools/browser/check_site.py build/html --screenshots build/screenshots

lint: $(STAMP)
	$(BIN)/ruff check mailqueue tests tools docs conftest.py
	$(BIN)/ruff format --check mailqueue tests tools docs conftest.py
	$(BIN)/mypy

# Branch coverage of mailqueue/ in every process the tests start: the spec
# and the tests, the spec with its lists in PostgreSQL, and the spec against
# GNU Mailman (its adapter's code), combined.  CI gets the same figure from
# its own runs with WITH_COVERAGE=1, then make coverage-report.
coverage: $(STAMP) postgresql-server
	rm -rf build/coverage
	$(MAKE) WITH_COVERAGE=1 test spec-postgresql
	$(MAKE) WITH_COVERAGE=1 conformance IMPL=mailman
	$(MAKE) coverage-report

# Open to all: one test runs the mailqueue command as nobody.
coverage-data:
	mkdir -p build/coverage && chmod 1777 build/coverage

# The floor (fail_under in pyproject.toml) is 100 %.
coverage-report: $(STAMP)
	$(BIN)/coverage combine -q
	$(BIN)/coverage html -q -d build/coverage/html
	$(BIN)/coverage report

# The full hostile-file run; make test runs a reduced one (tests/tools).
fuzz: $(STAMP)
	mkdir -p $(dir $(FUZZ_REPORT))
	$(BIN)/python tools/hostile/fuzz.py --cases 10000 --report $(FUZZ_REPORT)

# Debian's strace, which the crash test records each operation's calls with.
strace:
	@$(call apt-install,command -v strace,strace)

# Every state a crash can leave, for every queue operation, each state tried
# (make test runs a reduced one: tests/tools/test_crash.py).  Its figures go to
# $(CRASH_REPORT).
crash-test: $(STAMP) strace
	mkdir -p $(dir $(CRASH_REPORT))
	$(BIN)/python tools/crash/crash.py --full --report $(CRASH_REPORT)

# The full kill -9 soak and churn; make test runs reduced ones (tests/tools).
soak: $(STAMP)
	mkdir -p $(dir $(SOAK_REPORT))
	$(BIN)/python tools/soak/soak.py --report $(SOAK_REPORT)

bench: $(STAMP)
	$(BIN)/python -W ignore::DeprecationWarning tools/bench/bench_queue.py --json $(BENCH_REPORT)

# The reports of the full runs above, copied from $(REPORTS) into docs/
# (those there: a run not made is not published), for make docs to show.
PUBLISHED := reliability-run soak-run crash-run bench-run cluster-run \
	conformance-matrix mailman-plugin-run
publish:
	@copied=0; for name in $(PUBLISHED); do \
		if [ -f $(REPORTS)/$$name.json ]; then \
			cp $(REPORTS)/$$name.json docs/$$name.json; \
			echo "published $(REPORTS)/$$name.json as docs/$$name.json"; \
			copied=$$((copied + 1)); \
		fi; \
	done; \
	[ $$copied -gt 0 ] || echo "nothing to publish: no report in $(REPORTS)"

# The spec documents in reverse order, in one process: a document that
# leaves state behind which an earlier one trips over.  Not part of make
# test (see tests/test_isolation.py for what that checks, and why).
isolation: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $$(LC_ALL=C ls -r docs/*.rst)

# Debian's PostgreSQL server, for the spec run against it.
postgresql-server:
	@$(call apt-install,ls /usr/lib/postgresql/*/bin/initdb,postgresql)

# The spec with the list database in PostgreSQL (a throwaway server on
# loopback, stopped afterwards whatever happens), and the list tests.
spec-postgresql: $(STAMP) postgresql-server $(MEASURED)
	$(BIN)/python tools/servers/servers.py postgresql -- \
		$(RUN) -m pytest -q -p no:cacheprovider docs tests/test_lists.py

# Debian's GlusterFS server and client, and PostgreSQL, for the cluster test.
cluster-servers: postgresql-server
	@$(call apt-install,command -v glusterd,glusterfs-server glusterfs-client)

# Two hosts (two mounts of one volume) with a real kill; everything it
# starts it stops, even when it fails.
cluster-test: $(STAMP) cluster-servers
	$(BIN)/python tools/cluster/cluster.py --report $(CLUSTER_REPORT)

clean:
	rm -rf build $(VENV) .pytest_cache .ruff_cache .hypothesis
