# Two commands a newcomer needs: `make run` and `make test`. Everything else is optional.
.PHONY: run run-cluster demo test test-cluster setup lint check stack-start stack-stop stack-status bench clean

PY := .venv/bin/python

run: setup ## install what is missing, start the stack and every service (Ctrl-C stops all)
	$(PY) scripts/run.py $(RUN_FLAGS)

run-cluster: setup ## the clustered topology: Redis Cluster 3+3, 3 Kafka brokers, 2 of every service
	$(PY) scripts/run.py --cluster $(RUN_FLAGS)

demo: setup ## `make run` plus local APNs/FCM/Web Push stand-ins; then try scripts/demo_push.py
	$(PY) scripts/run.py --demo

test: setup ## the same set-up, then lint, types and the test suite (all but the clustered suite)
	bash scripts/test.sh

test-cluster: setup ## the clustered-topology suite alone: Redis Cluster 3+3, 2 of every service, failover
	bash scripts/test.sh --cluster

setup: ## virtualenv + locked packages, local stack, migrations and Kafka topics (idempotent)
	bash scripts/setup.sh

lint: ## ruff + mypy --strict only
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

stack-start:
	python3 scripts/stack.py start
stack-stop:
	python3 scripts/stack.py stop
stack-status:
	python3 scripts/stack.py status

clean: stack-stop ## stop the stack and delete its data and the virtualenv
	rm -rf .stack .venv
