"""``comfyui-gateway demo``: two simulated ComfyUI backends and a gateway, in one command.

For a newcomer with no ComfyUI: it starts two simulated backends as child processes on free
loopback ports, puts the gateway in front of them, prints the URLs, and stops the children (by
their PIDs) when the gateway stops.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import structlog

from gateway.config.models import GatewayConfig

log = structlog.get_logger("gateway.demo")
READY_TIMEOUT = 30.0


def start_backend(
    name: str, job_duration: float, data_dir: Path
) -> tuple[subprocess.Popen[str], str]:
    """Start one simulated backend process; return it and its base URL once it listens."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.testing",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--name",
            name,
            "--job-duration",
            str(job_duration),
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("READY "):
            return process, line.split(" ", 1)[1].strip()
    process.kill()
    raise RuntimeError(f"simulated backend {name!r} exited before it was ready")


def stop_backend(process: subprocess.Popen[str]) -> None:
    """Stop a backend process by its PID (terminate, then kill after a grace period)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_demo(host: str, port: int, job_duration: float) -> int:
    """Run the demo until interrupted; return the exit code."""
    from gateway import serve
    from gateway.app import create_app
    from gateway.observability.logging import log_banner

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-demo-")))
        urls = []
        for name in ("demo-a", "demo-b"):
            (workdir / name).mkdir()
            process, url = start_backend(name, job_duration, workdir / name)
            stack.callback(stop_backend, process)
            urls.append(url)
        config = GatewayConfig.model_validate(
            {
                "listen": {"host": host, "port": port},
                "servers": [
                    {"id": "a", "name": "Simulated GPU A", "url": urls[0], "priority": 10},
                    {"id": "b", "name": "Simulated GPU B", "url": urls[1], "priority": 20},
                ],
                "active": "a",
            }
        )
        print(f"comfyui-gateway demo: backends {urls[0]} and {urls[1]}", flush=True)
        print(f"  ComfyUI API and web UI:  http://{host}:{port}/", flush=True)
        print(f"  dashboard:               http://{host}:{port}/gateway/", flush=True)
        print("  stop with Ctrl+C", flush=True)
        serve.run(
            create_app(config),
            host=host,
            port=port,
            print=log_banner,
            shutdown_timeout=5.0,
            access_log=False,
        )
    return 0
