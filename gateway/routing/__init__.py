"""Routing decisions, pure: which server serves (:mod:`.failover`), where a request goes
(:mod:`.select`)."""

from gateway.routing.failover import (
    Decision,
    FailoverPolicy,
    FailoverView,
    ServerView,
    Switch,
    never_busy,
    rank,
)
from gateway.routing.select import candidates, make_picker, pick_backend, server_views

__all__ = [
    "Decision",
    "FailoverPolicy",
    "FailoverView",
    "ServerView",
    "Switch",
    "candidates",
    "make_picker",
    "never_busy",
    "pick_backend",
    "rank",
    "server_views",
]
