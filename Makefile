# Entry points for people; CI runs `make test` (see .ci/run). `make help` lists them.
.PHONY: help run test prep services down status bench bench-api bench-fleet bench-bases image up logs devc

# docker compose, docker-compose or podman-compose, whichever is installed.
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
	elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; \
	elif command -v podman-compose >/dev/null 2>&1; then echo podman-compose; \
	else echo "echo no compose tool found: install docker compose or podman-compose; false"; fi)

## Every target with what it does.
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-z][a-z-]*:/{if(doc!=""){split($$0,t,":"); printf "  %-10s %s\n", t[1], doc}; doc=""}' $(MAKEFILE_LIST)

## Set up services, build, start the worker and run a demo build of examples/hello-world.
run:
	scripts/demo.sh

## The whole test suite against real RabbitMQ, registry, podman and git.
test:
	scripts/test.sh

## Before a commit: format, lint, then the whole test suite.
prep:
	cargo fmt
	cargo clippy --all-targets -- -D warnings
	scripts/test.sh

## Install (if needed) and start RabbitMQ, the registry and the base image.
services:
	scripts/services.sh up

## Stop the compose stack (if any), the demo worker, the demo git daemon and the services.
down:
	-@if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 \
		|| command -v podman-compose >/dev/null 2>&1; then $(COMPOSE) down 2>/dev/null; fi
	-@[ -f .run/worker.pid ] && kill -TERM $$(cat .run/worker.pid) 2>/dev/null; rm -f .run/worker.pid
	-@[ -f .run/git-daemon.pid ] && kill $$(cat .run/git-daemon.pid) 2>/dev/null; rm -f .run/git-daemon.pid
	scripts/services.sh down

## Say what runs.
status:
	scripts/services.sh status

## Worker vs raw clone+build+push: medians, cached latency/throughput, RSS; a Debian/apt repo over smart HTTP; 8 mixed requests.
bench:
	scripts/bench.sh

## 3 replicas, 200 mixed requests: throughput, p99 pickup, warm-hit ratio with/without affinity.
bench-fleet:
	scripts/bench-fleet.sh

## A base image moves: time from its push to the last of 20 dependents' image.updated.
bench-bases:
	scripts/bench-bases.sh

## GET /v1/builds latency (p50/p99, wrk) with 10,000 stored builds, SQLite and PostgreSQL.
bench-api:
	scripts/bench-api.sh

## The service image (Containerfile) from a binary built here, checked (podman, no registry pulls).
image:
	cargo build --bin image-builder
	scripts/service-image.sh target/debug/image-builder localhost/image-builder:latest

## Build the image and run 3 worker replicas, the API, RabbitMQ, the registry and PostgreSQL.
up:
	$(COMPOSE) up -d --build

## Follow the logs of everything `make up` started.
logs:
	$(COMPOSE) logs -f

## Open a shell in the development container (needs the devcontainer CLI: npm i -g @devcontainers/cli).
devc:
	devcontainer up --workspace-folder .
	devcontainer exec --workspace-folder . bash
