"""Benchmarks: `make bench` runs them all; each module also runs alone (`python -m benchmarks.bench_ingest`).

HARNESS names the modules benchmarks share, bottom to top: each imports only
those before it, and a benchmark imports only these, never another benchmark
(tests/test_architecture.py).
"""

HARNESS = ("common", "inputs", "serving", "tables")
