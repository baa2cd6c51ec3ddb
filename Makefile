# Two commands do everything on a fresh machine:
#   make run   — one router, embedded in-memory engine, no Redis needed, port 3000
#   make test  — unit, property and integration tests (installs redis-server/nginx if missing)

PORT ?= 3000
JWT_SECRET ?= dev-secret-change-me
CARGO ?= cargo

.PHONY: run test deps build lint bench

run:
	JWT_SECRET=$(JWT_SECRET) PORT=$(PORT) $(CARGO) run --release --bin presence-router

build:
	$(CARGO) build --release --all-targets

# Integration tests start real redis-server, nginx and headless Chromium processes;
# install them when absent.
PACKAGES = redis-server redis-tools nginx-light chromium
deps:
	@if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
		|| ! command -v nginx >/dev/null || ! command -v chromium >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(PACKAGES) >/dev/null; \
	fi

bench: deps
	scripts/bench.sh

test: deps
	$(CARGO) build --bins --examples
	$(CARGO) test --all-targets

lint:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --check
