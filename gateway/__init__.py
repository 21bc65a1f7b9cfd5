"""The live edge: WebSocket and SSE connections relaying per-user Redis pub/sub."""
