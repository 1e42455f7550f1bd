"""Benchmarks of the call endpoint, each next to a baseline measured in the same run.

Run `python -m bench [--quick] [--repeat N] [--only NAME]`. Every figure is the median of repeated
runs; its baseline (bare aiortc / bare PyAV doing the same media work) is measured in the same
process on the same machine, interleaved with it, so the ratio compares like with like. Benchmarks
report figures and never assert on timings: the table's pass/fail is a reading, not a test.
"""
