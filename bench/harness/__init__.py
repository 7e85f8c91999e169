"""Benchmark harness behind bench/run.py (servers, publishers, load generator driver, scenarios, report)."""
