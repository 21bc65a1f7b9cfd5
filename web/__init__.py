"""Static web client and ops dashboard, served by the API server."""

from pathlib import Path

STATIC_DIR = Path(__file__).with_name("static")
