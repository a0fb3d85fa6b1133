# The two commands a new user needs: `make run` and `make test`. Each installs what is missing first.
SWIFT ?= swift
BIN = $(shell $(SWIFT) build --show-bin-path)/statefn

.PHONY: run test build deps bench clean

deps:
	@scripts/install-deps

build: deps
	$(SWIFT) build

# statefn with the embedded PostgreSQL (under .statefn/) and the example functions, on 127.0.0.1:8080; it prints a
# development API key (admin:*), kept in .statefn/dev-key.
run: build
	$(BIN) serve --functions functions --data-dir .statefn --dev-key

# Every test: unit, against a real PostgreSQL the tests start, real worker processes, and the built binary over HTTP.
test: build
	@scripts/python-tools
	$(SWIFT) test

bench:
	@scripts/install-deps --bench
	bench/run

clean:
	rm -rf .build .statefn
