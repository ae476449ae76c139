"""Command line: ``comfyui-gateway [--config PATH] [--host H] [--port P]`` and subcommands.

Subcommands: ``run`` (default), ``check-config PATH``, ``migrate PATH``, ``demo``.
Exit codes: 0 ok, 2 invalid configuration or usage, 1 runtime failure.
The config path comes from ``--config``, else ``$COMFYUI_GATEWAY_CONFIG``; with neither, the
gateway runs on a built-in default (one server at http://127.0.0.1:8188) and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from gateway import __version__
from gateway.config.models import GatewayConfig, default_config, exposure_problem

if TYPE_CHECKING:
    from gateway.config.store import ConfigStore

ENV_CONFIG = "COMFYUI_GATEWAY_CONFIG"
log = structlog.get_logger("gateway.cli")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    parser = argparse.ArgumentParser(
        prog="comfyui-gateway",
        description="One ComfyUI-compatible URL in front of many ComfyUI servers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_run_options(parser)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the gateway (default)")
    _add_run_options(run)
    check = sub.add_parser("check-config", help="validate a config file, print every problem")
    check.add_argument("path", type=Path)
    migrate = sub.add_parser("migrate", help="convert an old single-server config in place")
    migrate.add_argument("path", type=Path)
    demo = sub.add_parser("demo", help="start two simulated ComfyUI backends and the gateway")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8190)
    demo.add_argument("--job-duration", type=float, default=2.0)
    _add_log_options(demo)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    default = argparse.SUPPRESS
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        help=f"config file (default: ${ENV_CONFIG}, else built-in default)",
    )
    parser.add_argument("--host", default=default, help="listen address (overrides the file)")
    parser.add_argument("--port", type=int, default=default, help="listen port (overrides)")
    _add_log_options(parser)


def _add_log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format", default=argparse.SUPPRESS, choices=["auto", "json", "console"]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    _configure_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "auto"))
    command = args.command or "run"
    if command == "check-config":
        return check_config(args.path)
    if command == "migrate":
        return migrate(args.path)
    if command == "demo":
        from gateway.demo import run_demo

        return run_demo(host=args.host, port=args.port, job_duration=args.job_duration)
    return run(
        getattr(args, "config", None), getattr(args, "host", None), getattr(args, "port", None)
    )


def _configure_logging(level: str, fmt: str) -> None:
    try:
        from gateway.observability.logging import configure_logging
    except ImportError:  # pragma: no cover - observability is part of the package
        return
    configure_logging(level=level, fmt=fmt)  # type: ignore[arg-type]


def check_config(path: Path) -> int:
    """Print every problem of a config file; exit 0 with a summary when it is valid."""
    from gateway.config.loader import ConfigError, load_config

    try:
        loaded = load_config(path, migrate=False)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    config = loaded.config
    enabled = sum(s.enabled for s in config.servers)
    print(
        f"{path}: OK: {len(config.servers)} server(s), {enabled} enabled, "
        f"active={config.preferred_id or '-'}, listen={config.listen.host}:{config.listen.port}"
        + (" (migrated from the old single-server format)" if loaded.migrated else "")
    )
    return 0


def migrate(path: Path) -> int:
    """Convert an old single-server config file in place (a backup is kept)."""
    from gateway.config.loader import ConfigError
    from gateway.config.migrate import migrate_file

    try:
        result = migrate_file(path)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    print(result.summary() if hasattr(result, "summary") else str(result))
    return 0


def open_store(path: Path | None, host: str | None, port: int | None) -> ConfigStore:
    """Load the configuration from ``path``, ``$COMFYUI_GATEWAY_CONFIG`` or the default.

    ``--host``/``--port`` override the file for this run only: they are applied like the
    environment overrides, so an admin change never writes them into the file.
    """
    from gateway.config.loader import apply_env_overrides, load_config
    from gateway.config.store import ConfigStore

    def overrides(config: GatewayConfig) -> GatewayConfig:
        config = apply_env_overrides(config)
        flags = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        if not flags:
            return config
        return config.model_copy(update={"listen": config.listen.model_copy(update=flags)})

    if path is None and os.environ.get(ENV_CONFIG):
        path = Path(os.environ[ENV_CONFIG])
    if path is None:
        log.warning(
            "no config file given: running on the built-in default",
            server="http://127.0.0.1:8188",
            hint=f"use --config or ${ENV_CONFIG}",
        )
        return ConfigStore(None, overrides(default_config()), overrides=overrides)
    loaded = load_config(path)
    return ConfigStore(
        loaded.path,
        overrides(loaded.file_config),
        file_config=loaded.file_config,
        digest=loaded.digest,
        overrides=overrides,
    )


def run(path: Path | None, host: str | None, port: int | None) -> int:
    """Run the gateway until SIGINT/SIGTERM."""
    from gateway.config.loader import ConfigError

    try:
        store = open_store(path, host, port)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    config = store.config
    listen = config.listen
    problem = exposure_problem(config)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from gateway import serve
    from gateway.app import create_app
    from gateway.observability.logging import log_banner

    _install_uvloop()
    app = create_app(config, store=store)
    log.info(
        "gateway starting",
        listen=f"http://{listen.host}:{listen.port}",
        servers=[s.id for s in config.servers],
        active=config.preferred_id,
        config=str(store.path) if store.path else "built-in default",
    )
    serve.run(app, host=listen.host, port=listen.port, shutdown_timeout=10.0, print=log_banner)
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
