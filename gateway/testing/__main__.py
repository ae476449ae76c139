"""Run one simulated ComfyUI backend as a process: ``python -m gateway.testing --port 0``.

Prints exactly one line ``READY http://HOST:PORT`` (the real port when ``--port 0``) on stdout
once listening, then serves until SIGTERM/SIGINT and exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from gateway.testing.fake_comfy import create_fake_comfy_app
from gateway.testing.fake_state import FakeComfyOptions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the simulated backend."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.testing", description="Simulated ComfyUI 0.3.64 backend."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--name", default="fake", help="backend identity (argv, PNG metadata)")
    parser.add_argument("--job-duration", type=float, default=0.2, help="seconds per prompt")
    parser.add_argument("--steps", type=int, default=4, help="progress steps per prompt")
    parser.add_argument("--data-dir", type=Path, default=None, help="input/output/temp/user")
    parser.add_argument("--frontend-root", type=Path, default=None, help="static web root")
    parser.add_argument(
        "--max-upload-size", type=float, default=100, help="in MB, like ComfyUI (default 100)"
    )
    parser.add_argument(
        "--fast", action="store_true", help="benchmark mode: job duration 0 and 1 step"
    )
    parser.add_argument("--verbose", action="store_true", help="log to stderr")
    return parser.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> FakeComfyOptions:
    """Map the command line onto :class:`FakeComfyOptions`."""
    return FakeComfyOptions(
        name=args.name,
        job_duration=0.0 if args.fast else args.job_duration,
        steps=1 if args.fast else args.steps,
        max_upload_size=round(args.max_upload_size * 1024 * 1024),
        data_dir=args.data_dir,
        frontend_root=args.frontend_root,
    )


async def serve(args: argparse.Namespace) -> None:
    """Start the app, print READY, wait for a termination signal, clean up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before READY: a signal may follow at once
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    app = create_fake_comfy_app(options_from_args(args))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in str(host) else host
        print(f"READY http://{shown}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
