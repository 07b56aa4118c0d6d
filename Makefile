# Subgate developer commands. `make run` starts the stack, `make test` runs the suite.
# Recipes are POSIX sh and work with the GNU make 3.81 that macOS ships.

PYTHON ?= python3
VENV ?= .venv
VENV_PY := $(VENV)/bin/python
STAMP := $(VENV)/.subgate-installed
PYTEST_ARGS ?=
STOREKIT_DIR ?= .data/dev-storekit

.PHONY: help venv install run test lint certs storekit-dev clean distclean soak
.PHONY: cluster lint-deploy bench

help:
	@echo "make run           start Redis (embedded if needed), auth and gateway"
	@echo "make cluster       Redis, auth, 3 gateways and nginx in front (needs nginx)"
	@echo "make bench         gateway vs direct vs nginx hop (needs wrk and nginx)"
	@echo "make lint-deploy   check docker-compose.yml, the Dockerfile and nginx's config"
	@echo "make test          run the whole test suite (PYTEST_ARGS=... to narrow it)"
	@echo "make lint          ruff check, ruff format --check, mypy"
	@echo "make soak          two minutes of mixed traffic through three gateways"
	@echo "make install       create $(VENV) and install the pinned dependencies"
	@echo "make certs         fetch Apple's root certificates into certs/"
	@echo "make storekit-dev  create a local test root for signing test purchases"
	@echo "make clean         remove caches (keeps $(VENV), .env and .data)"
	@echo "make distclean     also remove $(VENV)"

venv: $(VENV_PY)

$(VENV_PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "Subgate needs Python 3.11 or newer; '$(PYTHON)' is:"; \
		$(PYTHON) --version; \
		echo "Install 3.11+ and run: make PYTHON=python3.11 ..."; \
		exit 1; }
	$(PYTHON) -m venv $(VENV)

install: $(STAMP)

# Re-installs whenever the lock or the project's dependency lists change.
$(STAMP): $(VENV_PY) requirements.lock pyproject.toml
	@$(VENV_PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "$(VENV) uses Python older than 3.11; run 'make distclean' first."; \
		exit 1; }
	$(VENV_PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(VENV_PY) scripts/run_stack.py

cluster: $(STAMP)
	$(VENV_PY) scripts/cluster.py

bench: $(STAMP)
	$(VENV_PY) -m pip install --quiet -c requirements.lock -e '.[dev,bench]'
	$(VENV_PY) -m bench.run

lint-deploy: $(STAMP)
	$(VENV)/bin/pytest -q tests/deploy/test_compose.py tests/deploy/test_dockerfile.py \
		tests/deploy/test_nginx_config.py

test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

soak: $(STAMP)
	$(VENV_PY) scripts/soak.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

certs:
	sh scripts/fetch_apple_certs.sh

storekit-dev: $(STAMP)
	@if [ -f $(STOREKIT_DIR)/root.cer ]; then \
		echo "Using the development chain already in $(STOREKIT_DIR)."; \
	else \
		$(VENV_PY) -m auth_service.dev_storekit init --dir $(STOREKIT_DIR); \
	fi
	@mkdir -p $(STOREKIT_DIR)/trusted
	@cp $(STOREKIT_DIR)/root.cer $(STOREKIT_DIR)/trusted/subgate-dev-root.cer
	@echo ""
	@echo "$(STOREKIT_DIR)/trusted now holds only the test root. Nothing trusts it"
	@echo "unless you say so. To try a login, start the stack trusting it:"
	@echo ""
	@echo "  APPLE_ROOT_CERTS_DIR=$(STOREKIT_DIR)/trusted APPSTORE_ENVIRONMENT=Sandbox \\"
	@echo "  APPSTORE_ONLINE_CHECKS=0 APP_BUNDLE_ID=com.example.app make run"
	@echo ""
	@echo "then, in another terminal, sign a test purchase and log in with it:"
	@echo ""
	@echo "  JWS=\$$($(VENV_PY) -m auth_service.dev_storekit sign \\"
	@echo "      --dir $(STOREKIT_DIR) --bundle-id com.example.app)"
	@echo "  curl -s -X POST --data-binary \"\$$JWS\" http://127.0.0.1:8080/appstore"
	@echo ""
	@echo "(sign also takes --product-id, --type, --expires-in, --environment.)"

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d ! -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
