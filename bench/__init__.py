"""Benchmarks (not tests); each writes reports/bench/<name>.json."""
