"""Helpers shared by the test suite and the benchmarks: data, live servers, load generators.

Both ``tests/`` and ``bench/`` import this package normally (the project root is on the path:
pytest's ``pythonpath`` setting, and the editable install for benchmarks).
"""
