"""Benchmarks of SPEC §10, run with ``scripts/bench [SUITE ...]``; not part of the test suite."""
