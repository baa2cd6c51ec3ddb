# Two commands do everything on a fresh machine:
#   make run   — one router, embedded in-memory engine, no Redis needed, port 3000
#   make test  — unit, property and integration tests, and the JavaScript client's tests
#                (installs redis-server, nginx, chromium, promtool, nodejs and npm if missing)

PORT ?= 3000
JWT_SECRET ?= dev-secret-change-me
CARGO ?= cargo

.PHONY: run test test-js deps build lint bench

run:
	JWT_SECRET=$(JWT_SECRET) PORT=$(PORT) $(CARGO) run --release --bin presence-router

build:
	$(CARGO) build --release --all-targets

# Integration tests start real redis-server, nginx and headless Chromium processes, and
# run promtool on live scrapes, the alert rules and the dashboard's queries; install them
# when absent. promtool comes with Debian's prometheus package, installed without its
# recommends (the node exporter).
PACKAGES = redis-server redis-tools nginx-light chromium
deps:
	@if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
		|| ! command -v nginx >/dev/null || ! command -v chromium >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(PACKAGES) >/dev/null; \
	fi
	@if ! command -v promtool >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm >/dev/null; \
	fi

bench: deps
	scripts/bench.sh

test: deps
	$(CARGO) build --bins --examples
	$(MAKE) --no-print-directory test-js
	$(CARGO) test --all-targets

# The TypeScript client in clients/js: installed from its lock file, built with tsc, and
# tested with node's test runner against the router binary (and in headless Chromium).
ROUTER_BIN ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug/presence-router
test-js:
	$(CARGO) build --bin presence-router
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error && PRESENCE_ROUTER_BIN=$(ROUTER_BIN) npm test

lint:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --check
