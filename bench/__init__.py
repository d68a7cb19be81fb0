"""Benchmarks: `make bench` runs them all; each writes its figures to bench/results/<name>.md."""
