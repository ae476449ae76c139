"""Fixtures of the fuzzing tests (defined in :mod:`tests.security.gateway_proc`)."""

from tests.security.gateway_proc import file_gateway, no_env_token

__all__ = ["file_gateway", "no_env_token"]
