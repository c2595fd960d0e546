"""Reproducible benchmarks of hpo (see docs/benchmarks.md)."""
