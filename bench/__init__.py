"""Benchmarks (not installed; run from the repo root: python -m bench.NAME)."""
