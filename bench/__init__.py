"""Benchmarks: run by hand, figures recorded in bench/README.md (never timed tests)."""
