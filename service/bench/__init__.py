"""Benchmarks (``tessera bench NAME``): ratios measured in one run, written to bench/results/.

Benchmarks report; they never assert speed. Tests assert correctness.
"""
