"""Tests of the tooling: the local stack, the supervisor (scripts/run.py), benchmarks."""
