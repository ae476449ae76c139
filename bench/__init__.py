"""Benchmarks of the gateway against direct access and nginx (issue 7): ``python bench/run.py``."""
