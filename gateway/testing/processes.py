"""Simulated backends as real child processes, for fault tests, benchmarks and the demo.

A :class:`BackendProcess` runs ``python -m gateway.testing`` on a loopback port and can be killed
(SIGKILL), frozen (SIGSTOP), thawed (SIGCONT) and restarted on the same port with empty state,
always addressed by its own PID.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

READY_TIMEOUT = 30.0


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BackendProcess:
    """One simulated ComfyUI backend in its own process."""

    def __init__(
        self,
        name: str,
        *,
        port: int = 0,
        job_duration: float = 0.2,
        steps: int = 4,
        data_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.port = port
        self.job_duration = job_duration
        self.steps = steps
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """Return the backend's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """Return the PID of the running process."""
        return self.process.pid if self.process else None

    async def start(self) -> BackendProcess:
        """Start the process and wait until it listens (on ``port``, or a new free one)."""
        args = [
            sys.executable,
            "-m",
            "gateway.testing",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--name",
            self.name,
            "--job-duration",
            str(self.job_duration),
            "--steps",
            str(self.steps),
            *self.extra_args,
        ]
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        self.process = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        async with asyncio.timeout(READY_TIMEOUT):
            while line := await self.process.stdout.readline():
                text = line.decode().strip()
                if text.startswith("READY "):
                    self.port = int(text.rsplit(":", 1)[1])
                    return self
        raise RuntimeError(f"backend {self.name!r} exited before it was ready")

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            os.kill(self.process.pid, sig)

    async def kill(self) -> None:
        """SIGKILL the process (a crash) and reap it."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            await self.process.wait()

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen process."""
        self._signal(signal.SIGCONT)

    async def restart(self) -> BackendProcess:
        """Kill the process and start a fresh one on the same port (empty history)."""
        await self.kill()
        return await self.start()

    async def stop(self) -> None:
        """Terminate the process (thawing it first), killing it if it does not exit."""
        if self.process is None or self.process.returncode is not None:
            return
        self.thaw()
        self._signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(5):
                await self.process.wait()
        except TimeoutError:
            await self.kill()
