"""Tests of the fan-out worker (fanout/)."""
