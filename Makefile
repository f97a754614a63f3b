# linkwork: the two commands a newcomer needs are `make demo` and `make test`.
# Everything they need (the broker, the databases) is started here and stopped again.

SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
SQLX_DATABASE ?= postgres://postgres@127.0.0.1:5432/linkwork_sqlx
LINKWORK_CACHE ?= $(HOME)/.cache/linkwork
SQLX_CLI := $(LINKWORK_CACHE)/sqlx-cli-0.8.6/bin

.PHONY: help demo test bench bench-peers lint fmt broker stop schemas sqlx-prepare sqlx-check install-sqlx-cli build fuzz

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

demo: ## run the pipeline end to end on a synthetic borough (NO_WAIT=1 to exit after the summary)
	@scripts/stack demo $(if $(NO_WAIT),--no-wait,)

test: ## run every test against a real broker and Postgres (started and stopped here)
	@scripts/stack test

bench: ## measure every stage beside the raw broker and Postgres (BENCH_ARGS=--quick for a short run); JSON in target/bench/
	@scripts/stack bench $(BENCH_ARGS)

bench-peers: ## parse + validate beside HAPI FHIR, fhir.resources and Medplum on the same payloads (installs them into the cache once; BENCH_ARGS=--quick)
	@scripts/stack bench-peers $(BENCH_ARGS)

fuzz: ## run the intake fuzzer for FUZZ_SECONDS (default 60), seeded from the conformance corpus
	@scripts/stack fuzz $(or $(FUZZ_SECONDS),60)

build: ## build everything
	$(CARGO) build --workspace --all-targets

lint: sqlx-check ## formatting, clippy with warnings as errors, sqlx offline data up to date
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

broker: ## start the local broker in the background (pid and log under .local/)
	@scripts/stack broker

stop: ## stop the broker started by `make broker`
	@scripts/stack stop

schemas: ## rewrite schemas/ from the Rust event types
	LINKWORK_BLESS_SCHEMAS=1 $(CARGO) test -p linkwork-domain --lib schema::

install-sqlx-cli:
	@test -x $(SQLX_CLI)/cargo-sqlx || $(CARGO) install sqlx-cli --locked --version 0.8.6 \
		--no-default-features --features postgres,native-tls --root $(LINKWORK_CACHE)/sqlx-cli-0.8.6

# A scratch database with every migration, in version order, for the query macros.
sqlx-database:
	@scripts/stack postgres
	@psql postgres://postgres@127.0.0.1:5432/postgres -qc 'DROP DATABASE IF EXISTS linkwork_sqlx WITH (FORCE)' -c 'CREATE DATABASE linkwork_sqlx'
	@for migration in $$(ls crates/*/migrations/*.sql services/*/migrations/*.sql | awk -F/ '{print $$NF" "$$0}' | sort | cut -d' ' -f2); do \
		psql $(SQLX_DATABASE) -q -v ON_ERROR_STOP=1 -f $$migration >/dev/null || exit 1; done

sqlx-prepare: install-sqlx-cli sqlx-database ## refresh .sqlx/ after changing a query or a migration
	DATABASE_URL=$(SQLX_DATABASE) PATH=$(SQLX_CLI):$$PATH $(CARGO) sqlx prepare --workspace -- --all-targets

sqlx-check: install-sqlx-cli sqlx-database ## fail if .sqlx/ is out of date
	DATABASE_URL=$(SQLX_DATABASE) PATH=$(SQLX_CLI):$$PATH $(CARGO) sqlx prepare --workspace --check -- --all-targets
