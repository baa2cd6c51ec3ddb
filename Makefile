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

# Integration tests start real redis-server and nginx processes; install them when absent.
deps:
	@if ! command -v redis-server >/dev/null || ! command -v nginx >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server nginx-light >/dev/null; \
		else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server nginx-light >/dev/null; fi; \
	fi

test: deps
	$(CARGO) build --bins --examples
	$(CARGO) test --all-targets

lint:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --check
