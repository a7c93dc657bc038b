"""Benchmarks: `make bench` runs them all; each module also runs alone (`python -m benchmarks.bench_ingest`)."""
