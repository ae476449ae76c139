"""Fixtures of the chaos tests: ``backend_process`` comes from tests/conftest.py."""
