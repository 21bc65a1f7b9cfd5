"""Domain modules: each owns the SQL of one part of the product (its tables, its
transactions, the events it enqueues in the outbox). HTTP handlers (server/handlers/)
parse the request, call one of these, and answer; caches and Redis effects stay with the
callers that need them."""
