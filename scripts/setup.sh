#!/usr/bin/env bash
# Idempotent set-up shared by `make run` and `make test`: Python packages from the lock
# file, the local stack (or the servers named by DATABASE_URL/REDIS_URL/KAFKA_BOOTSTRAP),
# schema migrations and Kafka topics. A second run only checks and returns quickly.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.11"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "Python 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11"

# uv resolves and installs from uv.lock; it comes from PyPI like everything else.
if ! command -v uv >/dev/null; then
  say "installing uv (package installer) from PyPI"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check uv \
    || die "could not install uv with pip; install it with: $PYTHON -m pip install uv"
fi
export UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy
uv sync --frozen --quiet --python "$(command -v "$PYTHON")" \
  || die "installing Python packages from uv.lock failed (see above)"

# Browser tests drive Debian's Chromium through Playwright (no browser download).
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  [ "$(id -u)" = 0 ] || die "Chromium not found at $CHROMIUM; install the Debian package 'chromium' (or set CHROMIUM=/path)"
  say "installing Chromium (Debian package) for the browser tests"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/tmp/feed-setup-apt.log 2>&1 \
    || { apt-get update -q >>/tmp/feed-setup-apt.log 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>/tmp/feed-setup-apt.log 2>&1; } \
    || die "apt-get install chromium failed; see /tmp/feed-setup-apt.log"
fi

"$PYTHON" scripts/stack.py start
# Export the stack's URLs for what the user did not point elsewhere.
eval "$("$PYTHON" scripts/stack.py env)"
.venv/bin/python -m core.bootstrap
