"""Measuring tools the benchmarks (bench/) share with their tests: FLOP floors, `make` timing, plots."""
