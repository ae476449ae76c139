"""Fixtures of the admin API tests (the harness itself lives in ``admin_harness``)."""

from admin_harness import _no_env_token, gw, make_harness

__all__ = ["_no_env_token", "gw", "make_harness"]
