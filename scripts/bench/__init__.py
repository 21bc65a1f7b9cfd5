"""Benchmarks against a separate, seeded database (never the dev `feed` database).

Run from the repository root as modules, e.g. `.venv/bin/python -m scripts.bench.seed`;
BENCHMARKS.md has the current figures and their commands; scripts/bench/results/ the history.
"""
