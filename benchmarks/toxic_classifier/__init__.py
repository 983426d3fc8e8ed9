"""Benchmark of the toxic-classifier Space: ``python -m benchmarks.toxic_classifier.bench``."""
