"""Logging set-up. Called only from entry points; library code just uses getLogger(__name__)."""

from __future__ import annotations

import logging
import re
import sys

from core.aiohttp_internals import HttpProcessingError

_TOKEN = re.compile(r"(access_token=|Bearer\s+)[^\s&'\"\\]+", re.IGNORECASE)


class MalformedRequests(logging.Filter):
    """aiohttp logs every request it cannot parse (a 400 it answers itself: a header line
    too long, a bad chunk, an unknown encoding) at ERROR with a traceback. Those are the
    client's faults, and anyone can send them: one WARNING line each, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # aiohttp quotes the request line, which may hold a token (?access_token=).
            line = f"{record.getMessage()}: {exc!s}".replace("\n", " ")
            record.msg, record.args = _TOKEN.sub(r"\1<redacted>", line), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def configure_logging(level: str, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)-5s {service} %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every reconnect attempt at ERROR; one line per outage is enough.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    quiet_malformed_requests()


def quiet_malformed_requests() -> None:
    """MalformedRequests on aiohttp's server log (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server_log.filters):
        server_log.addFilter(MalformedRequests())
