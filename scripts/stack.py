#!/usr/bin/env python3
"""`python3 scripts/stack.py start|stop|restart|status|env [service ...]`: the local stack,
whose code is the package scripts/stack/ (`--help` says more). The system python3 runs
this before the virtualenv exists: standard library only."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.stack.cli import entry

if __name__ == "__main__":
    sys.exit(entry())
