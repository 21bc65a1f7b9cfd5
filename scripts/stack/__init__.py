"""The local development stack (Postgres, its standby, Redis, Kafka, s3proxy) as our own
processes: one module per service, `cli` for `python3 scripts/stack.py`. Standard library
only: it runs before the virtualenv exists.

The names below are what other tools use (scripts/kafka_cluster.py starts brokers the way
`kafka` does)."""

from .config import HOST, KAFKA_STARTED_MARKER, Settings, StackError
from .host import port_answers, run
from .kafka import Kafka, broker_properties, new_cluster_id

__all__ = [
    "HOST",
    "KAFKA_STARTED_MARKER",
    "Kafka",
    "Settings",
    "StackError",
    "broker_properties",
    "new_cluster_id",
    "port_answers",
    "run",
]
