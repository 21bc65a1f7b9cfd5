"""A progress line on stderr for long steps: count, percentage, rate and elapsed time.

On a terminal the line is redrawn in place; otherwise one line every few seconds, so a
log file stays readable.
"""

from __future__ import annotations

import sys
import time

TTY_INTERVAL = 0.2
LOG_INTERVAL = 5.0


class Progress:
    def __init__(self, label: str, total: int, unit: str = "") -> None:
        self._label = label
        self._total = total
        self._unit = unit
        self._done = 0
        self._started = time.monotonic()
        self._shown = 0.0
        self._tty = sys.stderr.isatty()

    def add(self, n: int) -> None:
        self._done += n
        now = time.monotonic()
        if now - self._shown >= (TTY_INTERVAL if self._tty else LOG_INTERVAL):
            self._shown = now
            self._show(final=False)

    def finish(self) -> float:
        """Print the final line; return the elapsed seconds."""
        self._show(final=True)
        return time.monotonic() - self._started

    def _show(self, final: bool) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self._done / elapsed
        pct = 100.0 * self._done / self._total if self._total else 100.0
        line = (
            f"{self._label}: {self._done:,}/{self._total:,}{self._unit} ({pct:5.1f}%) "
            f"{rate:,.0f}/s {elapsed:6.1f}s"
        )
        if self._tty:
            end = "\n" if final else ""
            sys.stderr.write(f"\r\x1b[K{line}{end}")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def note(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()
