#!/usr/bin/env bash
# The README's test commands (after `make setup`):
#   bash scripts/test.sh            lint, types, then every test but the clustered suite
#   bash scripts/test.sh --cluster  the clustered-topology suite alone (`-m cluster`: Redis
#                                   Cluster 3+3, several nodes of every service, failover)
# Both run against the real local stack. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(python3 scripts/stack.py env)"

marker="not cluster"
if [[ "${1:-}" == "--cluster" ]]; then
  shift
  marker="cluster"
else
  echo "test: ruff"
  .venv/bin/ruff check .
  .venv/bin/ruff format --check .
  echo "test: mypy --strict"
  .venv/bin/mypy
fi
echo "test: pytest -m '$marker'"
# pytest exits 5 when no test ran; that is a failure here, and so it stays non-zero.
exec .venv/bin/pytest -m "$marker" "$@"
