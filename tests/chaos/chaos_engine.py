"""Chaos run: real backend processes, a fleet of websocket clients, a bounded fault injector.

Used by ``tests/chaos/test_chaos.py`` (short form, in CI) and ``bench/chaos.py`` (long form).

* Three simulated ComfyUI backends run as separate processes (:class:`BackendProcess`), each with
  its own data directory on disk.
* The gateway runs **in this process** (``create_app`` served by an ``AppRunner`` on
  ``127.0.0.1``), backed by a real YAML file through a :class:`ConfigStore`, so its internals can
  be inspected at the end (job tracker, websocket relay, ``gateway.tasks.running_tasks()``).
  Clients reach it through real sockets only.
* Each client holds one websocket (``/ws?clientId=...``), uploads an input, submits prompts that
  load it, waits for the end of each prompt on its websocket, then fetches the output image
  through the gateway (``/history/{id}`` and ``/view``) and compares it byte for byte with the
  file the backend wrote (read from the backend's data directory).
* The fault injector, bounded in count and time, SIGKILLs and restarts backends (empty
  history), freezes (SIGSTOP) and thaws (SIGCONT) them, makes them slow
  (``/__sim/control delay_responses``), keeps them down for a while (connections refused), and
  toggles the active server through the admin API (when it is mounted). At most
  ``backends - 1`` backends are faulted at once.

Invariants (:meth:`ChaosReport.violations`): every accepted prompt ended with
``execution_success`` delivered exactly once (and one ``executing`` with ``node: null``) to the
client that submitted it and to no one else; no prompt ran twice on backends that were healthy
during its life (executions are read from every backend's ``/__sim/state``, snapshotted before
each kill); stale copies were cancelled (none pending at the end); every image was retrievable
through the gateway and byte-identical to the backend's file; the gateway's task count went back
to its baseline and no client socket is left; the YAML file still loads and equals the config
in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from gateway import tasks as gateway_tasks
from gateway.app import JOBS, STORE, WS_RELAY, create_app
from gateway.config.loader import load_config
from gateway.config.models import GatewayConfig
from gateway.config.store import ConfigStore, to_yaml
from gateway.jobs import refs
from gateway.keys import EVENTS, REGISTRY
from gateway.serve import GatewayRunner
from gateway.testing import example_prompt, png_text
from gateway.testing.processes import BackendProcess

ADMIN_TOKEN = "chaos-admin-token-0123456789"
FAULT_KINDS = ("kill_restart", "freeze", "slow", "refuse", "activate")
TERMINALS = ("execution_success", "execution_error", "execution_interrupted")
# Fixed image bytes per client input (a tiny valid PNG header is not needed by the simulator).
INPUT_MAGIC = b"\x89PNG\r\n\x1a\n chaos input "


def _now() -> float:
    return time.monotonic()


def rss_bytes() -> int:
    """Return this process's resident set size (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def open_fds() -> int:
    """Return how many file descriptors this process has open (Linux; 0 elsewhere)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


@dataclass
class ChaosSettings:
    """Knobs of one run (the CI test uses small numbers, the bench script large ones)."""

    work_dir: Path
    duration: float = 25.0
    """Seconds during which clients submit new prompts and faults are injected."""
    clients: int = 4
    backends: int = 3
    job_duration: float = 0.3
    steps: int = 3
    max_faults: int = 10_000
    fault_gap: tuple[float, float] = (0.3, 1.2)
    """Random pause between two fault starts, seconds."""
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    seed: int | None = None
    prompt_timeout: float = 90.0
    """Longest wait for one prompt's end on the client socket."""
    fetch_timeout: float = 60.0
    drain_timeout: float = 60.0
    upload_every: int = 5
    """A client uploads a new input every this many prompts."""
    log: Callable[[str], None] = print


@dataclass(eq=False)
class PromptRun:
    """One prompt as its client saw it."""

    prompt_id: str
    client: str
    index: int
    input_name: str
    created_at: float = field(default_factory=_now)
    accepted_at: float | None = None
    finished_at: float | None = None
    submit_statuses: list[int] = field(default_factory=list)
    submit_errors: list[str] = field(default_factory=list)
    ambiguous: int = 0
    terminals: list[str] = field(default_factory=list)
    executing_null: int = 0
    executed_refs: list[dict[str, Any]] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    image: str = "pending"
    """``ok``, ``pending`` or why the image check failed."""
    history: str = "pending"
    """``ok``, ``missing`` (backend restarted since) or a failure."""


@dataclass
class FaultWindow:
    """One injected fault on one backend (``end`` None while it lasts)."""

    kind: str
    server: str
    start: float
    end: float | None = None


class Ledger:
    """What each backend process (server id, boot id) executed: snapshots of ``/__sim/state``."""

    def __init__(self) -> None:
        self.executed: dict[tuple[str, str], list[str]] = {}

    def record(self, server: str, state: dict[str, Any]) -> None:
        key = (server, str(state["boot_id"]))
        ids = list(state["executed_prompt_ids"])
        if len(ids) >= len(self.executed.get(key, [])):
            self.executed[key] = ids

    def executions(self) -> dict[str, list[tuple[str, str]]]:
        """Return prompt id -> every (server, boot) that started executing it (repeats kept)."""
        out: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for key, ids in self.executed.items():
            for prompt_id in ids:
                out[prompt_id].append(key)
        return out


async def sim_state(session: aiohttp.ClientSession, url: str, timeout: float = 3.0) -> Any:
    """Return a backend's ``/__sim/state`` (raises on failure)."""
    async with session.get(
        f"{url}/__sim/state", timeout=aiohttp.ClientTimeout(total=timeout)
    ) as resp:
        resp.raise_for_status()
        return await resp.json()


async def sim_control(session: aiohttp.ClientSession, url: str, **knobs: Any) -> None:
    """Set runtime knobs of a backend (raises on failure)."""
    async with session.post(
        f"{url}/__sim/control", json=knobs, timeout=aiohttp.ClientTimeout(total=3)
    ) as resp:
        resp.raise_for_status()


class Gateway:
    """The gateway under test, served in this process on an ephemeral loopback port."""

    def __init__(self, settings: ChaosSettings, backends: dict[str, BackendProcess]) -> None:
        self.settings = settings
        self.backends = backends
        self.path = settings.work_dir / "gateway.yaml"
        self.runner: GatewayRunner | None = None
        self.app: web.Application | None = None
        self.url = ""
        self.events: list[tuple[float, str, dict[str, Any]]] = []

    def config(self) -> GatewayConfig:
        servers = [
            {
                "id": server_id,
                "name": f"Chaos {backend.name}",
                "url": backend.url,
                "priority": 10 * i,
                "timeouts": {"connect": 2.0, "read": 8.0},
            }
            for i, (server_id, backend) in enumerate(self.backends.items())
        ]
        return GatewayConfig.model_validate(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "servers": servers,
                "active": next(iter(self.backends)),
                "health": {
                    "interval": 0.2,
                    "fast_interval": 0.05,
                    "down_interval": 0.2,
                    "timeout": 0.6,
                    "jitter": 0.0,
                    "rise": 1,
                    "fall": 2,
                },
                "failover": {"failback": "auto", "failback_hold": 1.0},
                "proxy": {"ws_heartbeat": 2.0},
                "admin": {"token": ADMIN_TOKEN},
            }
        )

    async def start(self) -> None:
        text = to_yaml(self.config(), include_secrets=True)
        await asyncio.to_thread(self.path.write_text, text)
        loaded = await asyncio.to_thread(load_config, self.path)
        store = ConfigStore.from_loaded(loaded)
        app = create_app(loaded.config, store=store)

        def record(event: Any) -> None:
            if event.kind != "server.checked":  # frequent and not needed by the analysis
                self.events.append((_now(), event.kind, dict(event.data)))

        app[EVENTS].add_listener(record)
        runner = GatewayRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.runner, self.app = runner, app

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def count(self, event_kind: str, /, **match: Any) -> int:
        return sum(
            1
            for _, k, data in self.events
            if k == event_kind and all(data.get(key) == value for key, value in match.items())
        )

    def downs(self) -> list[tuple[float, str]]:
        """Return (time, server) of every 'server.state -> down' verdict."""
        return [
            (t, data["server"])
            for t, kind, data in self.events
            if kind == "server.state" and data.get("state") == "down"
        ]

    def ups(self) -> list[tuple[float, str]]:
        return [
            (t, data["server"])
            for t, kind, data in self.events
            if kind == "server.state" and data.get("state") == "up"
        ]


class ChaosClient:
    """A ComfyUI API client: one websocket, uploads, prompts, image downloads."""

    def __init__(self, name: str, run: ChaosRun) -> None:
        self.name = name
        self.run = run
        self.client_id = uuid.uuid4().hex
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.prompts: dict[str, PromptRun] = {}
        self.foreign: list[dict[str, Any]] = []
        self.ws_drops = 0
        self.reader: asyncio.Task[None] | None = None
        self.input_name = ""
        self.upload_failures = 0
        self.uploads = 0
        self.closing = False

    @property
    def base(self) -> str:
        return self.run.gateway.url

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        await self._connect()

    async def _connect(self) -> None:
        assert self.session is not None
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ws = await self.session.ws_connect(
            f"{self.base}/ws?clientId={self.client_id}", heartbeat=10.0
        )
        self.reader = gateway_tasks.spawn(self._read(self.ws, first), name=f"chaos-{self.name}")
        async with asyncio.timeout(15):
            await first

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, first: asyncio.Future[None]) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                continue
            if msg.type != WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if data.get("type") == "status" and not first.done():
                first.set_result(None)
            self._dispatch(data)
        if not first.done():
            first.set_exception(ConnectionError(f"websocket closed: {ws.close_code}"))

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        data = message.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
            return
        run = self.prompts.get(data["prompt_id"])
        if run is None:
            self.foreign.append(message)
            return
        if kind in TERMINALS:
            run.terminals.append(kind)
            if kind == "execution_error":
                run.error_messages.append(str(data.get("exception_message")))
        elif kind == "executing" and data.get("node") is None:
            run.executing_null += 1
            if run.finished_at is None:
                run.finished_at = _now()
            run.done.set()
        elif kind == "executed" and data.get("node") == "3":
            images = (data.get("output") or {}).get("images") or []
            if images:
                run.executed_refs.append(images[0])

    async def ensure_socket(self) -> None:
        """Reconnect (same clientId) if the gateway closed the client's socket."""
        if self.ws is not None and not self.ws.closed:
            return
        self.ws_drops += 1
        self.run.log(f"  ! client {self.name}: websocket closed ({self.ws and self.ws.close_code})")
        if self.reader is not None:
            await gateway_tasks.cancel_and_wait(self.reader)
        await self._connect()

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await gateway_tasks.cancel_and_wait(self.reader)
        if self.session is not None:
            await self.session.close()

    # -- work ---------------------------------------------------------------------------------

    async def upload(self) -> None:
        """Upload a new input image (retried while no backend can take it)."""
        assert self.session is not None
        name = f"chaos-{self.name}-{self.uploads}.png"
        payload = INPUT_MAGIC + f"{self.name}/{self.uploads}".encode()
        deadline = _now() + self.run.settings.fetch_timeout
        while _now() < deadline:
            form = aiohttp.FormData()
            form.add_field("image", payload, filename=name, content_type="image/png")
            form.add_field("overwrite", "true")
            try:
                async with self.session.post(f"{self.base}/upload/image", data=form) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        self.input_name = json.loads(body)["name"]
                        self.uploads += 1
                        return
            except aiohttp.ClientError:
                pass
            self.upload_failures += 1
            await asyncio.sleep(0.2)  # retry pacing while backends come back
        raise AssertionError(f"client {self.name}: upload never succeeded")

    async def submit(self, index: int) -> PromptRun:
        """POST /prompt until the gateway accepts it (same prompt_id on every retry)."""
        assert self.session is not None
        run = PromptRun(uuid.uuid4().hex, self.name, index, self.input_name)
        self.prompts[run.prompt_id] = run
        graph = example_prompt(f"chaos/{self.name}/p{index}", load_image=self.input_name)
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": run.prompt_id}
        deadline = _now() + self.run.settings.fetch_timeout
        while True:
            try:
                async with self.session.post(f"{self.base}/prompt", json=body) as resp:
                    text = await resp.text()
                    run.submit_statuses.append(resp.status)
                    if resp.status == 200:
                        run.accepted_at = _now()
                        return run
                    run.submit_errors.append(f"{resp.status} {text[:300]}")
                    if "upstream_ambiguous" in text:
                        run.ambiguous += 1
                    if resp.status == 400:
                        run.accepted_at = None
                        return run  # refused: recorded as a failure, not retried
            except aiohttp.ClientError as exc:
                run.submit_errors.append(f"client error {exc!r}")
            if _now() > deadline:
                return run
            await asyncio.sleep(0.2)  # retry pacing: nothing was accepted yet

    async def wait_done(self, run: PromptRun) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.run.settings.prompt_timeout):
                while not run.done.is_set():
                    await self.ensure_socket()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(2.0):
                            await run.done.wait()

    async def _get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        assert self.session is not None
        try:
            async with self.session.get(f"{self.base}{path}", params=params) as resp:
                return resp.status, await resp.read()
        except aiohttp.ClientError as exc:
            return 599, repr(exc).encode()

    async def check_outputs(self, run: PromptRun) -> None:
        """Fetch /history/{id} and the image through the gateway; compare with the disk."""
        if not run.executed_refs:
            run.image = "no 'executed' event with an image"
            return
        ref = run.executed_refs[-1]
        server, subfolder = refs.untag_subfolder(ref.get("subfolder", ""))
        if server is None:
            run.image = f"untagged reference {ref}"
            return
        deadline = _now() + self.run.settings.fetch_timeout
        # History: the owner may be down right now (then it is retried) or restarted since the
        # prompt finished (its history is gone: recorded as "missing").
        while True:
            status, body = await self._get(f"/history/{run.prompt_id}")
            if status == 200:
                entry = json.loads(body).get(run.prompt_id)
                if entry is None:
                    run.history = "missing"
                else:
                    images = entry["outputs"]["3"]["images"]
                    run.history = "ok" if images[0] == ref else f"differs: {images[0]} != {ref}"
                break
            if _now() > deadline:
                run.history = f"HTTP {status}: {body[:200]!r}"
                break
            await asyncio.sleep(0.2)  # the owner is down: wait for it to come back
        while True:
            status, body = await self._get("/view", params={k: str(v) for k, v in ref.items()})
            if status == 200:
                break
            if _now() > deadline:
                run.image = f"/view HTTP {status}: {body[:200]!r}"
                return
            await asyncio.sleep(0.2)  # the owner is down: wait for it to come back
        backend = self.run.backends[server]
        path = backend.data_dir / "output" / subfolder / ref["filename"]  # type: ignore[operator]
        on_disk = await asyncio.to_thread(path.read_bytes)
        if body != on_disk:
            run.image = f"bytes differ from {path}"
        elif png_text(body).get("prompt_id") != run.prompt_id:
            run.image = f"image of another prompt: {png_text(body).get('prompt_id')}"
        else:
            run.image = "ok"

    async def work(self, stop: asyncio.Event) -> None:
        index = 0
        await self.upload()
        while not stop.is_set():
            if index and index % self.run.settings.upload_every == 0:
                await self.upload()
            await self.ensure_socket()
            run = await self.submit(index)
            index += 1
            self.run.submitted += 1
            if run.accepted_at is None:
                continue
            await self.wait_done(run)
            if run.done.is_set():
                await self.check_outputs(run)


class FaultInjector:
    """Inject faults, bounded in count and time, never on more than ``backends - 1`` at once."""

    def __init__(self, run: ChaosRun) -> None:
        self.run = run
        self.rng = random.Random(run.settings.seed)
        self.windows: list[FaultWindow] = []
        self.busy: set[str] = set()
        self.kinds = Counter[str]()
        self.skipped = Counter[str]()
        self.errors: list[str] = []
        self.admin_available = False

    def _pick(self) -> str | None:
        free = [s for s in self.run.backends if s not in self.busy]
        if len(self.busy) >= len(self.run.backends) - 1 or not free:
            return None
        return self.rng.choice(free)

    async def loop(self, stop: asyncio.Event) -> None:
        settings = self.run.settings
        running: set[asyncio.Task[None]] = set()
        bag: list[str] = []
        count = 0
        while not stop.is_set() and count < settings.max_faults:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.rng.uniform(*settings.fault_gap)):
                    await stop.wait()  # fault pacing, ended early by the stop signal
            if stop.is_set():
                break
            if not bag:  # every kind once per round, in a random order
                bag = list(settings.fault_kinds)
                self.rng.shuffle(bag)
            kind = bag.pop()
            if kind == "activate":
                if not self.admin_available:
                    self.skipped[kind] += 1
                    continue
                count += 1
                task = gateway_tasks.spawn(self.activate(), name="chaos-activate")
            else:
                server = self._pick()
                if server is None:
                    bag.append(kind)  # every backend that may be faulted is: try it later
                    continue
                count += 1
                self.busy.add(server)
                task = gateway_tasks.spawn(self.fault(kind, server), name=f"chaos-{kind}")
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def _snapshot(self, server: str) -> None:
        backend = self.run.backends[server]
        with contextlib.suppress(Exception):
            self.run.ledger.record(server, await sim_state(self.run.session, backend.url))

    async def fault(self, kind: str, server: str) -> None:
        backend = self.run.backends[server]
        window = FaultWindow(kind, server, _now())
        self.windows.append(window)
        self.kinds[kind] += 1
        rng = self.rng
        try:
            if kind == "kill_restart":
                await self._snapshot(server)
                await backend.kill()
                await asyncio.sleep(rng.uniform(0.0, 0.5))  # fault shape: time spent dead
                await backend.start()
            elif kind == "refuse":
                await self._snapshot(server)
                await backend.kill()
                await asyncio.sleep(rng.uniform(1.0, 3.0))  # fault shape: connections refused
                await backend.start()
            elif kind == "freeze":
                backend.freeze()
                try:
                    await asyncio.sleep(rng.uniform(0.3, 2.5))  # fault shape: time frozen
                finally:
                    backend.thaw()
            elif kind == "slow":
                await sim_control(
                    self.run.session, backend.url, delay_responses=rng.uniform(0.05, 0.3)
                )
                try:
                    await asyncio.sleep(rng.uniform(1.0, 3.0))  # fault shape: time slow
                finally:
                    await sim_control(self.run.session, backend.url, delay_responses=0.0)
        except Exception as exc:
            code = backend.process.returncode if backend.process else None
            died = f" (its process had exited with {code}: killed from outside?)" if code else ""
            self.errors.append(f"{kind} on {server}: {exc!r}{died}")
            if backend.process is None or backend.process.returncode is not None:
                with contextlib.suppress(Exception):
                    await backend.start()
        finally:
            window.end = _now()
            self.busy.discard(server)

    async def activate(self) -> None:
        server = self.rng.choice(list(self.run.backends))
        window = FaultWindow("activate", server, _now())
        self.kinds["activate"] += 1
        try:
            async with self.run.session.post(
                f"{self.run.gateway.url}/gateway/api/servers/{server}/activate",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                if resp.status != 200:
                    self.errors.append(f"activate {server}: HTTP {resp.status} {await resp.text()}")
        except aiohttp.ClientError as exc:
            self.errors.append(f"activate {server}: {exc!r}")
        window.end = _now()
        self.run.activations.append(window)


@dataclass
class ChaosReport:
    """Figures and invariant checks of one run."""

    settings: ChaosSettings
    duration: float = 0.0
    prompts_submitted: int = 0
    prompts_accepted: int = 0
    prompts_completed: int = 0
    prompts_lost: list[str] = field(default_factory=list)
    not_successful: list[str] = field(default_factory=list)
    """Accepted prompts whose terminal event was not ``execution_success`` (or none came)."""
    delivered_twice: list[str] = field(default_factory=list)
    missing_terminal: list[str] = field(default_factory=list)
    misdelivered: int = 0
    refused: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    stale_executions: int = 0
    copies_cancelled: int = 0
    stale_pending: list[str] = field(default_factory=list)
    unfinished_in_gateway: list[str] = field(default_factory=list)
    images_ok: int = 0
    image_failures: list[str] = field(default_factory=list)
    history_missing: int = 0
    history_failures: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    faults_skipped: Counter[str] = field(default_factory=Counter)
    fault_errors: list[str] = field(default_factory=list)
    failovers: int = 0
    serving_changes: int = 0
    downs: int = 0
    unexplained_downs: int = 0
    restarts_detected: int = 0
    recoveries: int = 0
    lost_events: int = 0
    ambiguous_submits: int = 0
    submit_retries: int = 0
    upload_failures: int = 0
    ws_drops: int = 0
    tasks_baseline: int = 0
    tasks_end: int = 0
    clients_left: int = 0
    rss_baseline: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    fds_baseline: int = 0
    fds_end: int = 0
    yaml_ok: bool = False
    yaml_error: str = ""
    admin_available: bool = False
    details: list[str] = field(default_factory=list)
    """A timeline for every prompt that broke an invariant (for the bug report)."""

    def violations(self) -> list[str]:
        """Return every broken invariant, one line each (empty: the run passed)."""
        out: list[str] = []

        def check(ok: bool, text: str) -> None:
            if not ok:
                out.append(text)

        check(not self.prompts_lost, f"prompts lost or failed: {self.prompts_lost[:10]}")
        check(
            not self.not_successful,
            f"prompts that did not end with execution_success: {self.not_successful[:10]}",
        )
        check(not self.refused, f"prompts refused by the gateway: {self.refused[:5]}")
        check(not self.delivered_twice, f"delivered more than once: {self.delivered_twice[:10]}")
        check(not self.missing_terminal, f"no terminal event: {self.missing_terminal[:10]}")
        check(self.misdelivered == 0, f"{self.misdelivered} events reached the wrong client")
        check(not self.duplicated, f"ran twice on healthy backends: {self.duplicated[:10]}")
        check(not self.stale_pending, f"stale copies never cancelled: {self.stale_pending[:10]}")
        check(
            not self.unfinished_in_gateway,
            f"unfinished in the gateway after the drain: {self.unfinished_in_gateway[:10]}",
        )
        check(not self.image_failures, f"image checks failed: {self.image_failures[:10]}")
        check(not self.history_failures, f"history checks failed: {self.history_failures[:10]}")
        check(self.ws_drops == 0, f"client websockets dropped {self.ws_drops} times")
        check(
            self.tasks_end <= self.tasks_baseline,
            f"gateway tasks {self.tasks_end} > baseline {self.tasks_baseline}",
        )
        check(self.clients_left == 0, f"{self.clients_left} client bridges left open")
        check(self.yaml_ok, f"config file invalid after the run: {self.yaml_error}")
        check(self.prompts_accepted > 0, "no prompt was accepted at all")
        check(not self.fault_errors, f"fault injector errors: {self.fault_errors[:5]}")
        return out

    def figures(self) -> str:
        """Return the printed summary."""
        mib = 1024 * 1024
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.faults_skipped.items()))
        lines = [
            f"chaos run: {self.duration:.0f} s, {self.settings.clients} clients, "
            f"{self.settings.backends} backends, seed {self.settings.seed}",
            f"  prompts: submitted {self.prompts_submitted}, accepted {self.prompts_accepted}, "
            f"completed {self.prompts_completed}",
            f"  faults: {sum(self.faults.values())} ({faults})"
            + (f"; skipped {skipped} (admin API not mounted)" if skipped else ""),
            f"  gateway: failovers {self.failovers}, serving changes {self.serving_changes}, "
            f"down verdicts {self.downs} ({self.unexplained_downs} outside fault windows), "
            f"restarts detected {self.restarts_detected}",
            f"  recoveries (re-submissions) {self.recoveries}, stale executions "
            f"{self.stale_executions}, copies cancelled {self.copies_cancelled}",
            f"  client side: submit retries {self.submit_retries} (ambiguous "
            f"{self.ambiguous_submits}), upload retries {self.upload_failures}, "
            f"ws drops {self.ws_drops}",
            f"  images byte-identical {self.images_ok}, history gone after a restart "
            f"{self.history_missing}",
            f"  lost {len(self.prompts_lost)}, duplicated {len(self.duplicated)}, "
            f"delivered twice {len(self.delivered_twice)}, misdelivered {self.misdelivered}",
            f"  tasks {self.tasks_baseline} -> {self.tasks_end}, RSS {self.rss_baseline / mib:.0f}"
            f" -> peak {self.rss_peak / mib:.0f} -> {self.rss_end / mib:.0f} MiB, fds "
            f"{self.fds_baseline} -> {self.fds_end}, YAML valid {self.yaml_ok}",
        ]
        return "\n".join(lines)


class ChaosRun:
    """One chaos run: start everything, run clients and faults, drain, check, stop."""

    def __init__(self, settings: ChaosSettings) -> None:
        if settings.seed is None:
            settings.seed = random.randrange(1 << 30)
        self.settings = settings
        self.log = settings.log
        self.backends: dict[str, BackendProcess] = {}
        self.gateway: Gateway
        self.session: aiohttp.ClientSession
        self.ledger = Ledger()
        self.submitted = 0
        self.activations: list[FaultWindow] = []
        self.clients: list[ChaosClient] = []
        self.injector: FaultInjector
        self._downs: list[tuple[float, str]] = []

    async def start_backends(self) -> None:
        async def one(i: int) -> None:
            data_dir = self.settings.work_dir / f"backend{i}"
            data_dir.mkdir(parents=True, exist_ok=True)
            backend = BackendProcess(
                f"chaos{i}",
                job_duration=self.settings.job_duration,
                steps=self.settings.steps,
                data_dir=data_dir,
            )
            await backend.start()
            self.backends[f"b{i}"] = backend

        await asyncio.gather(*(one(i) for i in range(self.settings.backends)))
        self.backends = dict(sorted(self.backends.items()))

    async def wait_all_up(self, timeout: float) -> bool:
        registry = self.gateway.app[REGISTRY]  # type: ignore[index]
        deadline = _now() + timeout
        while _now() < deadline:
            if all(registry.is_up(s) for s in self.backends):
                return True
            await asyncio.sleep(0.05)  # bounded polling of in-process state
        return False

    async def run(self) -> ChaosReport:
        report = ChaosReport(self.settings)
        self.session = aiohttp.ClientSession()
        try:
            await self.start_backends()
            self.gateway = Gateway(self.settings, self.backends)
            await self.gateway.start()
            try:
                return await self._run(report)
            finally:
                for client in self.clients:
                    with contextlib.suppress(Exception):
                        await client.close()
                await self.gateway.stop()
        finally:
            for backend in self.backends.values():
                with contextlib.suppress(Exception):
                    await backend.stop()
            await self.session.close()

    async def _run(self, report: ChaosReport) -> ChaosReport:
        settings = self.settings
        gateway = self.gateway
        app = gateway.app
        assert app is not None
        if not await self.wait_all_up(30):
            raise RuntimeError("backends never came up")
        async with self.session.get(f"{gateway.url}/gateway/api/openapi.json") as resp:
            admin = resp.status == 200 and "openapi" in (await resp.text())
        self.injector = FaultInjector(self)
        self.injector.admin_available = report.admin_available = admin
        if not admin and "activate" in settings.fault_kinds:
            self.log("  note: admin API not mounted: the 'activate' fault kind is skipped")
        report.tasks_baseline = gateway_tasks.running_tasks()
        report.rss_baseline = rss_bytes()
        report.fds_baseline = open_fds()
        self.clients = [ChaosClient(f"c{i}", self) for i in range(settings.clients)]
        await asyncio.gather(*(c.open() for c in self.clients))
        started = _now()
        stop = asyncio.Event()
        workers = [
            gateway_tasks.spawn(c.work(stop), name=f"chaos-client-{c.name}") for c in self.clients
        ]
        injector = gateway_tasks.spawn(self.injector.loop(stop), name="chaos-injector")
        peak = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.duration):
                while True:
                    peak = max(peak, rss_bytes())
                    await asyncio.sleep(1.0)  # periodic RSS sampling during the run
        stop.set()
        await injector
        self.log(f"  faults done after {_now() - started:.1f} s; draining")
        # Heal: every backend must be running and seen up before the invariants are checked.
        for server, backend in self.backends.items():
            if backend.process is None or backend.process.returncode is not None:
                self.injector.errors.append(f"{server} was left dead")
                await backend.start()
        healthy = await self.wait_all_up(30)
        try:
            async with asyncio.timeout(settings.drain_timeout):
                await asyncio.gather(*workers)
        except TimeoutError:
            self.log("  ! clients did not finish within the drain timeout")
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        else:
            for worker in workers:
                if worker.exception() is not None:
                    self.injector.errors.append(f"client failed: {worker.exception()!r}")
        report.duration = _now() - started
        # Let the recovery task finish its work (stale copies, reconciliation), bounded.
        tracker = app[JOBS].tracker
        deadline = _now() + 30
        while _now() < deadline:
            pending = [s for s in self.backends if tracker.stale_copies(s)]
            if not tracker.unfinished() and not pending:
                break
            await asyncio.sleep(0.1)  # bounded polling of in-process state
        for server, backend in self.backends.items():
            with contextlib.suppress(Exception):
                self.ledger.record(server, await sim_state(self.session, backend.url))
        peak = max(peak, rss_bytes())
        for client in self.clients:
            await client.close()
        relay = app[WS_RELAY]
        deadline = _now() + 15
        while _now() < deadline:
            if (
                relay.connected_clients() == 0
                and gateway_tasks.running_tasks() <= report.tasks_baseline
            ):
                break
            await asyncio.sleep(0.05)  # bounded polling of in-process state
        report.tasks_end = gateway_tasks.running_tasks()
        report.clients_left = relay.connected_clients()
        report.rss_peak = peak
        report.rss_end = rss_bytes()
        report.fds_end = open_fds()
        self._check_yaml(report)
        if not healthy:
            self.injector.errors.append("backends not all up after the faults")
        self._analyse(report)
        return report

    def _check_yaml(self, report: ChaosReport) -> None:
        store: ConfigStore = self.gateway.app[STORE]  # type: ignore[index]
        try:
            loaded = load_config(self.gateway.path, migrate=False)
        except Exception as exc:
            report.yaml_error = str(exc)
            return
        report.yaml_ok = loaded.file_config == store.file_config
        if not report.yaml_ok:
            report.yaml_error = "the file differs from the configuration in force"

    def _explained(self, server: str, start: float, end: float) -> bool:
        """Return True when ``server`` was faulted or declared down during [start, end]."""
        for window in self.injector.windows:
            w_end = window.end if window.end is not None else float("inf")
            if window.server == server and window.start <= end and w_end >= start:
                return True
        return any(s == server and start <= t <= end for t, s in self._downs)

    def _analyse(self, report: ChaosReport) -> None:
        gateway = self.gateway
        app = gateway.app
        assert app is not None
        tracker = app[JOBS].tracker
        executions = self.ledger.executions()
        self._downs = gateway.downs()
        report.faults = self.injector.kinds
        report.faults_skipped = self.injector.skipped
        report.fault_errors = list(self.injector.errors)
        report.prompts_submitted = self.submitted
        for client in self.clients:
            report.ws_drops += client.ws_drops
            report.misdelivered += len(client.foreign)
            report.upload_failures += client.upload_failures
            for run in client.prompts.values():
                report.submit_retries += max(0, len(run.submit_statuses) - 1)
                report.ambiguous_submits += run.ambiguous
                if run.accepted_at is None:
                    report.refused.append(f"{run.prompt_id}: {run.submit_errors[-1:]}")
                    continue
                report.prompts_accepted += 1
                ok = run.terminals == ["execution_success"] and run.executing_null == 1
                if run.terminals.count("execution_success") == 1:
                    report.prompts_completed += 1
                if "execution_success" not in run.terminals:
                    report.not_successful.append(f"{run.prompt_id}: {run.terminals}")
                if "execution_error" in run.terminals or not run.done.is_set():
                    report.prompts_lost.append(f"{run.prompt_id}: {run.error_messages[:1]}")
                if len(run.terminals) > 1 or run.executing_null > 1:
                    report.delivered_twice.append(
                        f"{run.prompt_id}: {run.terminals} +{run.executing_null} null"
                    )
                if not run.terminals:
                    report.missing_terminal.append(run.prompt_id)
                if ok:
                    if run.image == "ok":
                        report.images_ok += 1
                    else:
                        report.image_failures.append(f"{run.prompt_id}: {run.image}")
                    if run.history == "missing":
                        report.history_missing += 1
                    elif run.history != "ok":
                        report.history_failures.append(f"{run.prompt_id}: {run.history}")
                # Executions on backends that were healthy during the prompt's life: at most one.
                start = run.created_at
                end = (run.finished_at or _now()) + 0.5
                runs = executions.get(run.prompt_id, [])
                healthy = [key for key in runs if not self._explained(key[0], start - 0.5, end)]
                report.stale_executions += max(0, len(runs) - 1)
                if len(healthy) > 1:
                    report.duplicated.append(f"{run.prompt_id}: {runs}")
        report.unfinished_in_gateway = [r.prompt_id for r in tracker.unfinished()]
        # The gateway must never accept a prompt again once it reported it completed.
        completed: set[str] = set()
        for _, kind, data in gateway.events:
            prompt_id = data.get("prompt_id")
            if kind == "prompt.completed":
                completed.add(prompt_id)
            elif kind in ("prompt.submitted", "prompt.resubmitted") and prompt_id in completed:
                text = f"{prompt_id}: accepted again ({kind}) after it completed"
                if text not in report.duplicated:
                    report.duplicated.append(text)
        suspects = {
            text.split(":", 1)[0]
            for text in (
                report.prompts_lost
                + report.not_successful
                + report.delivered_twice
                + report.duplicated
                + report.image_failures
                + report.history_failures
                + report.missing_terminal
                + report.unfinished_in_gateway
            )
        }
        for prompt_id in sorted(suspects)[:5]:
            report.details.extend(self.timeline(prompt_id, executions))
        report.stale_pending = [
            f"{r.prompt_id}@{s}" for s in self.backends for r in tracker.stale_copies(s)
        ]
        report.copies_cancelled = gateway.count("prompt.copy_cancelled")
        report.recoveries = gateway.count("prompt.resubmitted")
        report.lost_events = gateway.count("prompt.lost")
        report.failovers = gateway.count("serving.changed", kind="failover")
        report.serving_changes = gateway.count("serving.changed")
        report.restarts_detected = gateway.count("server.restarted")
        downs = gateway.downs()
        report.downs = len(downs)
        report.unexplained_downs = sum(
            1
            for t, s in downs
            if not any(
                w.server == s and w.start <= t <= (w.end or float("inf")) + 3.0
                for w in self.injector.windows
            )
        )

    def timeline(self, prompt_id: str, executions: dict[str, list[tuple[str, str]]]) -> list[str]:
        """Return what happened around one prompt: client view, gateway events, faults."""
        run = next((c.prompts[prompt_id] for c in self.clients if prompt_id in c.prompts), None)
        if run is None:
            return [f"{prompt_id}: unknown"]
        t0 = run.created_at
        record = self.gateway.app[JOBS].tracker.record(prompt_id)  # type: ignore[index]
        state = (
            None
            if record is None
            else (
                record.backend,
                record.state.value,
                record.attempts,
                record.previous_backends,
                sorted(record.cancel_pending),
            )
        )
        lines = [
            f"== {prompt_id} (client {run.client} #{run.index}) submit {run.submit_statuses} "
            f"{run.submit_errors[-1:]} terminals {run.terminals} null {run.executing_null} "
            f"finished {None if run.finished_at is None else round(run.finished_at - t0, 2)} "
            f"image {run.image!r} history {run.history!r}",
            f"   gateway record: {state}",
            f"   executions: {executions.get(prompt_id, [])}",
        ]
        end = (run.finished_at or _now()) + 2
        for window in self.injector.windows + self.activations:
            w_end = window.end if window.end is not None else float("inf")
            if window.start <= end and w_end >= t0 - 2:
                lines.append(
                    f"   fault {window.kind} {window.server} "
                    f"{window.start - t0:+.2f}..{w_end - t0:+.2f}"
                )
        for t, kind, data in self.gateway.events:
            if t0 - 2 <= t <= end and (
                data.get("prompt_id") == prompt_id
                or kind in ("server.state", "serving.changed", "server.restarted")
            ):
                lines.append(f"   {t - t0:+.2f} {kind} {data}")
        return lines


async def run_chaos(settings: ChaosSettings) -> ChaosReport:
    """Run one chaos session and return its report."""
    return await ChaosRun(settings).run()
