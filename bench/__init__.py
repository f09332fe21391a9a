"""Benchmark scripts (run them directly; they are not part of the test suite)."""
