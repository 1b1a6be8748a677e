PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
# The CPU build of torch (torch==2.13.0+cpu in the lock) is not on PyPI: uv looks for it in
# these places (a folder of wheels or a package index), as pip does through its own config.
TORCH_FIND_LINKS ?= /opt/wheels
UV_FLAGS := $(if $(wildcard $(TORCH_FIND_LINKS)),--find-links $(TORCH_FIND_LINKS))
LOCKS := locks/main.txt locks/nodeps.txt locks/uv.txt
# The workplace's check that every module src/ imports is declared in pyproject.toml.
IMPORT_CHECK := ../shared/tools/check_imports.py
export HF_HUB_OFFLINE := 1

.PHONY: demo test install install-test check-lock lock bench clean

# Never resolves afresh: installs exactly what locks/ pins (hash-checked), then modelport
# itself without dependencies and without build isolation (setuptools comes from the lock).
$(VENV)/.installed: $(LOCKS) pyproject.toml constraints.txt scripts/lock.py
	@$(PY) scripts/lock.py check
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r locks/uv.txt
	$(UV) pip sync -q --python $(BIN)/python --require-hashes $(UV_FLAGS) locks/main.txt
	$(UV) pip install -q --python $(BIN)/python --require-hashes --no-deps -r locks/nodeps.txt
	$(UV) pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $@

# A lock file that is missing: the check says so (and how to regenerate it) instead of make's "No rule".
$(LOCKS):
	@$(PY) scripts/lock.py check

install: $(VENV)/.installed

install-test: install

check-lock:
	@$(PY) scripts/lock.py check

demo: install
	$(BIN)/modelport demo

# The registry tests also run against a real PostgreSQL server: Debian's package, when initdb is missing.
.PHONY: postgres
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	 ( [ "$$(id -u)" = 0 ] && apt-get install -y -q postgresql || sudo -n apt-get install -y -q postgresql ) || \
	 echo "note: postgresql is not installed: the registry tests skip their PostgreSQL runs"

test: install postgres
	$(BIN)/python -m pip check 2>&1 | $(PY) scripts/lock.py pip-check
	@if [ -f $(IMPORT_CHECK) ]; then $(BIN)/python $(IMPORT_CHECK) . && echo "import check: every third-party import is declared"; \
	 else echo "note: $(IMPORT_CHECK) not found beside this checkout: import check skipped"; fi
	$(BIN)/python -m pytest -n 2 -q

# Regenerates locks/ from pyproject.toml and constraints.txt with the newest versions they allow.
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	test -x $(UV) || $(BIN)/python -m pip install -q --require-hashes --no-deps -r locks/uv.txt
	$(PY) scripts/lock.py compile --uv $(UV) $(UV_FLAGS)

bench: install
	$(BIN)/python benchmarks/conversion_and_latency.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
