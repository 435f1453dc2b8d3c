"""Benchmarks run as ``python -m ringtrain bench NAME``; each prints a table and can write JSON."""
