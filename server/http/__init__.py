"""The API server's HTTP layer: the feed's fast path in front of aiohttp, the one
middleware, request parsing and validation, the error shape, JSON answers and the
OpenAPI document."""
