#!/usr/bin/env bash
# The README's test command (after `make setup`): lint, types, then the whole suite
# against the real local stack. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(python3 scripts/stack.py env)"

echo "test: ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "test: mypy --strict"
.venv/bin/mypy
echo "test: pytest"
# pytest exits 5 when no test ran; that is a failure here, and so it stays non-zero.
exec .venv/bin/pytest "$@"
