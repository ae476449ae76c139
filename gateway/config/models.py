"""The gateway's configuration, modelled once.

Every other representation derives from these models: the YAML file on disk, the admin API's
JSON bodies, export/import, and the OpenAPI document (through ``model_json_schema``).

Example::

    >>> cfg = GatewayConfig.model_validate({
    ...     "servers": [{"name": "Local GPU", "url": "http://127.0.0.1:8188"}],
    ... })
    >>> cfg.servers[0].id, cfg.preferred_id
    ('local-gpu', 'local-gpu')

Rules enforced here (so that no other module has to re-check them):

* unknown keys are errors at every level (``extra="forbid"``);
* server ids are unique, stable slugs; an omitted id is derived from the name;
* ``active`` names a configured server (or is omitted: the first enabled server by priority);
* backend URLs are ``http``/``https`` with a host, no query or fragment;
* secrets (admin token, backend credentials) are ``SecretStr``: they never appear in ``repr``,
  logs or the default export.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from yarl import URL

SERVER_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
DEFAULT_BACKEND_URL = "http://127.0.0.1:8188"
DEFAULT_LISTEN_PORT = 8190

ServerId = Annotated[
    str,
    Field(
        pattern=SERVER_ID_PATTERN,
        description="Unique, stable identifier: lowercase letters, digits, '-' and '_'.",
        examples=["local", "render-1"],
    ),
]
Seconds = Annotated[float, Field(gt=0, le=86400)]


def slugify(name: str) -> str:
    """Derive a server id from a display name (``"Local GPU #2"`` -> ``"local-gpu-2"``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return (slug or "server")[:64].rstrip("-_") or "server"


def _check_header_names(value: dict[str, SecretStr]) -> dict[str, SecretStr]:
    """Refuse header names that are not RFC 9110 tokens."""
    for name in value:
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ValueError(f"invalid header name {name!r}")
    return value


class _Model(BaseModel):
    """Base for every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ListenConfig(_Model):
    """Where the gateway listens. Loopback by default: exposing it is an explicit choice."""

    host: str = Field("127.0.0.1", description="Bind address (use 0.0.0.0 to expose).")
    port: int = Field(DEFAULT_LISTEN_PORT, ge=0, le=65535, description="TCP port (0: any free).")


class BasicAuth(_Model):
    """HTTP basic credentials for one backend."""

    username: str = Field(min_length=1)
    password: SecretStr


class BackendAuth(_Model):
    """Credentials the gateway presents to one backend, on HTTP requests and on ``/ws``.

    Any combination is allowed; they are only ever sent to their own backend.
    """

    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra request headers, e.g. an API gateway key."
    )
    basic: BasicAuth | None = Field(None, description="HTTP basic authentication.")
    bearer_token: SecretStr | None = Field(None, description="Sent as 'Authorization: Bearer'.")
    query_token: SecretStr | None = Field(
        None, description="Appended as '?token=' (ComfyUI-Login style), also on /ws."
    )

    _header_names_are_tokens = field_validator("headers")(_check_header_names)


class ServerTimeouts(_Model):
    """Timeouts for traffic the gateway proxies to one backend (health checks have their own)."""

    connect: Seconds = Field(5.0, description="TCP connect (and TLS) timeout, seconds.")
    read: Seconds | None = Field(
        300.0,
        description="Longest silence while waiting for response bytes, seconds (null: none).",
    )


class ServerConfig(_Model):
    """One ComfyUI backend."""

    id: ServerId
    name: str = Field(min_length=1, max_length=200, description="Display name.")
    url: str = Field(
        description="Base URL of the ComfyUI server, e.g. http://127.0.0.1:8188.",
        # Documents the validator's first rule in the JSON schema (OpenAPI, editors).
        json_schema_extra={"pattern": r"^\s*[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]+"},
    )
    enabled: bool = Field(True, description="Disabled servers are never checked nor used.")
    priority: int = Field(
        100,
        ge=0,
        le=1_000_000,
        description="Auto-switch order: lower numbers are tried first; ties go to lower latency.",
    )
    timeouts: ServerTimeouts = Field(default_factory=ServerTimeouts)
    auth: BackendAuth | None = Field(None, description="Credentials for this backend only.")
    max_connections: int = Field(
        100, ge=1, le=10_000, description="Concurrent upstream HTTP connections to this backend."
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_id_and_name(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if not data.get("id") and isinstance(data.get("name"), str):
                data["id"] = slugify(data["name"])
            if not data.get("name") and isinstance(data.get("id"), str):
                data["name"] = data["id"]
        return data

    @field_validator("url")
    @classmethod
    def _url_is_http_base(cls, value: str) -> str:
        value = value.strip()
        try:
            url = URL(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if url.scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://")
        if not url.host:
            raise ValueError("has no host")
        if url.query_string or url.fragment:
            raise ValueError("must not contain a query or fragment")
        if url.user or url.password:
            raise ValueError("must not contain credentials: use the server's 'auth' block")
        return value.rstrip("/")


FailbackPolicy = Literal["auto", "manual"]


class HealthSettings(_Model):
    """Active health checks, with HAProxy's inter/fastinter/downinter and rise/fall semantics."""

    path: str = Field("/system_stats", pattern=r"^/", description="Probe path (GET).")
    interval: Seconds = Field(2.0, description="Interval while a server is steadily up.")
    fast_interval: Seconds = Field(
        0.5, description="Interval while a server is changing state or never checked."
    )
    down_interval: Seconds = Field(5.0, description="Interval while a server is steadily down.")
    jitter: float = Field(0.1, ge=0, le=1, description="Random spread, fraction of interval.")
    timeout: Seconds = Field(2.0, description="Probe timeout, seconds.")
    rise: int = Field(2, ge=1, le=100, description="Consecutive successes to mark a server up.")
    fall: int = Field(3, ge=1, le=100, description="Consecutive failures to mark a server down.")
    read_queue: bool = Field(True, description="Also read the queue length from GET /prompt.")


class FailoverSettings(_Model):
    """When and how the serving server changes without an admin."""

    auto_switch: bool = Field(True, description="Switch to a healthy server when serving fails.")
    failback: FailbackPolicy = Field(
        "auto",
        description="auto: return to the preferred server once healthy for failback_hold "
        "seconds and idle; manual: stay until an admin selects a server.",
    )
    failback_hold: float = Field(
        30.0, ge=0, le=86400, description="Healthy time before failing back, seconds."
    )
    resubmit_lost_prompts: bool = Field(
        True, description="Re-submit unfinished prompts of a failed server to the new one."
    )


class ProxySettings(_Model):
    """Data-plane limits and front-door policy."""

    max_body_size: int = Field(
        1024 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, bytes (413 above it).",
    )
    ws_max_message_size: int = Field(
        64 * 1024 * 1024, ge=1024 * 1024, description="Largest websocket message, bytes."
    )
    ws_heartbeat: Seconds = Field(30.0, description="Websocket ping interval, seconds.")
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Extra browser origins allowed to call the gateway (e.g. https://app.example).",
    )
    trust_forwarded_headers: bool = Field(
        False,
        description="Trust X-Forwarded-* from the client (only behind a trusted proxy).",
    )


class AdminSettings(_Model):
    """The admin API's protection."""

    token: SecretStr | None = Field(
        None,
        description="Admin token; COMFYUI_GATEWAY_ADMIN_TOKEN overrides. Required for writes.",
    )
    protect_reads: bool = Field(False, description="Require the token for admin reads too.")
    allow_remote_without_token: bool = Field(
        False,
        description="Allow a non-loopback listen address without a token (not recommended).",
    )


class JobSettings(_Model):
    """Bounds of the job-tracking tables (prompt/file/client affinity, upload cache)."""

    affinity_max_entries: int = Field(100_000, ge=100, description="Entries per affinity map.")
    affinity_ttl: float = Field(7 * 86400, gt=0, description="Age after which entries are dropped.")
    upload_cache_bytes: int = Field(
        2 * 1024 * 1024 * 1024, ge=0, description="Bytes of uploaded inputs kept for failover."
    )


AlertEventName = Literal[
    "server_down", "server_up", "failover", "all_down", "recovered", "prompt_lost"
]
"""What an alert webhook can be told about (see :mod:`gateway.alerts` for when each fires)."""
ALERT_EVENTS: tuple[AlertEventName, ...] = (
    "server_down",
    "server_up",
    "failover",
    "all_down",
    "recovered",
    "prompt_lost",
)
WebhookFormat = Literal["generic", "slack", "discord"]
WEBHOOK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class WebhookConfig(_Model):
    """One alert receiver: an HTTP(S) URL that gets a JSON POST per alert.

    The URL usually carries a token (Slack and Discord put it in the path), so it is a secret:
    it is never logged, shown in errors, exported without secrets, or used as a metric label;
    the webhook's ``name`` identifies it instead.
    """

    url: SecretStr = Field(
        description="Receiver URL (http:// or https://); a secret: Slack/Discord URLs hold a token."
    )
    name: str | None = Field(
        None,
        pattern=WEBHOOK_NAME_PATTERN,
        description="Label used in logs and metrics instead of the URL; default webhook-N "
        "(N: its position, from 1).",
    )
    format: WebhookFormat = Field(
        "generic",
        description="generic: the gateway's JSON document; slack: {'text': ...}; "
        "discord: {'content': ...}.",
    )
    events: list[AlertEventName] = Field(
        default_factory=lambda: list(ALERT_EVENTS),
        min_length=1,
        description="Alerts sent to this webhook (default: all of server_down, server_up, "
        "failover, all_down, recovered, prompt_lost).",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra request headers, e.g. Authorization for a generic receiver (secrets).",
    )
    max_per_minute: int = Field(
        10,
        ge=1,
        le=600,
        description="Rate limit: messages in any 60 s window; alerts above it are merged into "
        "one digest sent when the window allows.",
    )
    timeout: Seconds = Field(10.0, description="Timeout of one delivery attempt, seconds.")
    max_attempts: int = Field(
        5, ge=1, le=20, description="Attempts per message (first try included) before giving up."
    )
    backoff: Seconds = Field(
        1.0, description="Delay before the first retry, seconds; doubles each retry, with jitter."
    )
    backoff_max: Seconds = Field(60.0, description="Longest delay between two attempts, seconds.")

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: SecretStr) -> SecretStr:
        # The message never repeats the value: it is a secret.
        try:
            url = URL(value.get_secret_value().strip())
        except (ValueError, TypeError):
            raise ValueError("not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        return SecretStr(str(url))

    _header_names_are_tokens = field_validator("headers")(_check_header_names)


class AlertSettings(_Model):
    """Alert webhooks: who is told when servers go down or up, fail over or prompts are lost."""

    webhooks: list[WebhookConfig] = Field(
        default_factory=list, description="Receivers; none by default (alerts off)."
    )
    instance: str | None = Field(
        None,
        max_length=200,
        description="Name of this gateway in alert messages; default: the machine's host name.",
    )
    queue_size: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Alerts waiting per webhook (while it is slow or rate-limited); the oldest "
        "are dropped, and counted, when full.",
    )

    @model_validator(mode="after")
    def _names_are_unique(self) -> AlertSettings:
        seen: set[str] = set()
        for name in self.webhook_names():
            if name in seen:
                raise ValueError(f"duplicate webhook name {name!r}")
            seen.add(name)
        return self

    def webhook_names(self) -> list[str]:
        """Return the effective name of every webhook (``name``, else ``webhook-N``)."""
        return [w.name or f"webhook-{i}" for i, w in enumerate(self.webhooks, start=1)]


class GatewayConfig(_Model):
    """The whole configuration file."""

    listen: ListenConfig = Field(default_factory=ListenConfig)
    servers: list[ServerConfig] = Field(default_factory=list)
    active: ServerId | None = Field(
        None, description="The preferred server; the first enabled one by priority when omitted."
    )
    health: HealthSettings = Field(default_factory=HealthSettings)
    failover: FailoverSettings = Field(default_factory=FailoverSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    alerts: AlertSettings = Field(
        default_factory=AlertSettings, description="Alert webhooks (none by default)."
    )

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        seen: set[str] = set()
        for server in self.servers:
            if server.id in seen:
                raise ValueError(f"duplicate server id {server.id!r}")
            seen.add(server.id)
        if self.active is not None and self.active not in seen:
            raise ValueError(f"active: {self.active!r} names no configured server")
        return self

    @property
    def preferred_id(self) -> str | None:
        """Return the admin's preferred server: ``active``, else the best enabled server."""
        if self.active is not None:
            return self.active
        enabled = [s for s in self.servers if s.enabled]
        if not enabled:
            return None
        return min(enabled, key=lambda s: s.priority).id

    def server(self, server_id: str) -> ServerConfig | None:
        """Return the server with this id, or None."""
        return next((s for s in self.servers if s.id == server_id), None)


def is_loopback(host: str) -> bool:
    """Return True when a listen address only reaches this machine."""
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problem(config: GatewayConfig) -> str | None:
    """Return why ``config`` must not be in force (admin API exposed without a token), or None.

    Checked at start-up and on every change (admin API, import, hand edit): a configuration
    that listens beyond loopback without an admin token would open every admin write to the
    network.
    """
    if config.admin.token is not None or config.admin.allow_remote_without_token:
        return None
    if is_loopback(config.listen.host):
        return None
    return (
        f"refusing to listen on {config.listen.host} without an admin token: set admin.token "
        "(or COMFYUI_GATEWAY_ADMIN_TOKEN), or admin.allow_remote_without_token: true"
    )


def default_config() -> GatewayConfig:
    """Return the built-in configuration used when no file is given: one local ComfyUI."""
    return GatewayConfig(
        servers=[ServerConfig(id="local", name="Local ComfyUI", url=DEFAULT_BACKEND_URL)],
        active="local",
    )
