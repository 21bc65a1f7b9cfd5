"""The API contract as typed models: request bodies, query parameters and responses.

Both the request validation (server/http/validation.py) and the OpenAPI document
(server/http/openapi.py) come from these models, so a limit is stated once. Models are
grouped by resource; `fields` holds the shared field types and their refusal codes,
`parse` turns a model's validation errors into the API's one error shape, and `paths`
lists the operations the document (server/http/openapi.py) is rendered from.

Why pydantic v2 rather than msgspec: a validation error comes back structured (error
type, location, the bound that failed), which maps onto our stable error codes and
`field` exactly; msgspec reports an English sentence we would have to parse. Its JSON
Schema output is draft 2020-12, the dialect of OpenAPI 3.1, constraints included. The
hot path is no slower: the JSON is still parsed by orjson (the same bytes are accepted,
the same ones get 400), then validated by pydantic's compiled core, and the text checks
take a C-level fast path (str.isprintable) before the per-character walk. Parsing a
POST /v1/posts body, timeit, best of 7 (2 noisy cores): 0.15-0.8x the time of the
hand-written checks it replaces; beside those checks given the same fast path, 0.5-1.25x
(within this machine's noise). Query parameters (the feed's) are still parsed by hand, with the
bounds read from their models (server/contract/queries.py).

This package does no I/O and never imports handlers (they import it).
"""
