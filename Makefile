# Entry points for people; CI runs `make test` (see .ci/run).
.PHONY: run test services down status bench bench-api

## Set up services, build, start the worker and run a demo build of examples/hello-world.
run:
	scripts/demo.sh

## The whole test suite against real RabbitMQ, registry, podman and git.
test:
	scripts/test.sh

## Install (if needed) and start RabbitMQ, the registry and the base image.
services:
	scripts/services.sh up

## Stop the demo worker, the demo git daemon and the services.
down:
	-@[ -f .run/worker.pid ] && kill -TERM $$(cat .run/worker.pid) 2>/dev/null; rm -f .run/worker.pid
	-@[ -f .run/git-daemon.pid ] && kill $$(cat .run/git-daemon.pid) 2>/dev/null; rm -f .run/git-daemon.pid
	scripts/services.sh down

status:
	scripts/services.sh status

## Worker vs raw clone+build+push: medians, cached latency/throughput, RSS.
bench:
	scripts/bench.sh

## GET /v1/builds latency (p50/p99, wrk) with 10,000 stored builds, SQLite and PostgreSQL.
bench-api:
	scripts/bench-api.sh
