"""The configuration file as the source of truth: atomic saves, one backup, a lock, live reload.

Contract of :class:`ConfigStore`:

* **Changes** go through :meth:`ConfigStore.update` only. Under one ``asyncio.Lock`` it computes
  the new config from the current one, validates it completely, writes the file atomically (temp
  file in the same directory, flush + fsync, ``os.replace``, fsync of the directory) after copying
  the previous content to ``PATH.bak`` (one backup), and only then swaps the in-memory config and
  calls the ``on_change`` listeners. A change that raises, fails validation or fails to save
  changes nothing: not the memory, not the file. A crash at any point leaves either the old or
  the new file, never a partial one.
* **Runtime overrides are never persisted.** The running config is ``overrides(file config)``
  (by default :func:`~gateway.config.loader.apply_env_overrides`: the admin token from the
  environment). When saving, every value a change did not touch is written as the file had it.
* **Hand edits** are picked up: :meth:`ConfigStore.reload` (called by the poller started with
  :meth:`ConfigStore.watch` / :meth:`ConfigStore.run_watcher`, by SIGHUP once
  :meth:`ConfigStore.install_sighup` is called, and before every update) re-reads the file. An
  invalid file is refused with a logged error listing every located problem and the running config
  stays. The store recognises its own writes by content hash, so they never count as edits.
* **No file** (``path=None``, the built-in default): changes apply in memory only and are lost on
  restart; that is logged once, at the first change.
* The saved YAML is readable: a header saying the file is managed, then ``listen``, ``servers``,
  ``active`` and the settings sections, each value that equals its default left out. PyYAML does
  not keep comments, so comments written by hand are lost at the next admin change (the header
  says so). Secrets are written in clear (this file is the source of truth) and the file is made
  ``0600`` when it holds any; exports (:func:`to_yaml` / :func:`dump_config` with
  ``include_secrets=False``) mask them as ``********``.

Round trip: ``parse_config(to_yaml(c, include_secrets=True), src) == c`` for every valid ``c``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, SecretStr

from gateway.config.loader import (
    ENV_ADMIN_TOKEN,
    SECRET_MASK,
    ConfigError,
    LoadedConfig,
    apply_env_overrides,
    decode,
    digest_of,
    parse_document,
    validate_document,
)
from gateway.config.models import GatewayConfig, exposure_problem
from gateway.config.yaml_io import dump_yaml
from gateway.tasks import spawn

MANAGED_HEADER = (
    "# Managed by comfyui-gateway: admin changes rewrite this file. Hand edits are picked up "
    "live; comments below this header are not preserved."
)
BACKUP_MODE = 0o600
"""Backups may hold secrets: owner-only."""
SECRET_FILE_MODE = 0o600
DEFAULT_FILE_MODE = 0o644

ConfigListener = Callable[[GatewayConfig, str], None]
"""Called as ``listener(new_config, reason)`` after a change is saved (or reloaded)."""
Overrides = Callable[[GatewayConfig], GatewayConfig]
FileSignature = tuple[int, int, int]
"""``(st_mtime_ns, st_size, st_ino)``: cheap change detection for the poller."""

_log = structlog.get_logger("gateway.config")


class ConfigSaveError(OSError):
    """The configuration file could not be written; memory and file are unchanged."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(cause.errno, f"cannot save {path}: {cause.strerror or cause}")
        self.path = path
        self.cause = cause

    def __str__(self) -> str:
        """Return a one-line description naming the file."""
        return str(self.args[1])


# -- serialization ---------------------------------------------------------------------


def dump_config(config: GatewayConfig, *, include_secrets: bool) -> dict[str, Any]:
    """Return the readable, JSON-ready form of ``config``.

    ``listen``, ``servers`` and ``active`` (when set) are always present; elsewhere, at every
    level, values equal to their defaults are left out. Secrets are masked as ``********``
    unless ``include_secrets``.
    """
    data = _dump_model(config, include_secrets)
    head: dict[str, Any] = {
        "listen": _dump_model(config.listen, include_secrets, always=("host", "port")),
        "servers": data.pop("servers", []),
    }
    data.pop("listen", None)
    return head | data


def to_yaml(
    config: GatewayConfig,
    *,
    include_secrets: bool,
    header: bool = True,
    notes: Sequence[str] = (),
) -> str:
    """Render ``config`` as YAML (see :func:`dump_config`), sections separated by blank lines.

    ``header`` adds the "managed file" comment; ``notes`` are extra comment lines under it.
    """
    comments = ([MANAGED_HEADER] if header else []) + [f"# {n}" if n else "#" for n in notes]
    sections = [
        dump_yaml({key: value})
        for key, value in dump_config(config, include_secrets=include_secrets).items()
    ]
    prefix = "\n".join(comments) + "\n\n" if comments else ""
    return prefix + "\n".join(sections)


def has_secrets(config: GatewayConfig) -> bool:
    """Return True when the config holds an admin token, a backend credential or a webhook."""
    return (
        config.admin.token is not None
        or any(s.auth is not None for s in config.servers)
        or bool(config.alerts.webhooks)
    )


def _dump_model(model: BaseModel, reveal: bool, *, always: Sequence[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if (
            name not in always
            and not info.is_required()
            and value == info.get_default(call_default_factory=True)
        ):
            continue
        out[name] = _dump_value(value, reveal)
    return out


def _dump_value(value: Any, reveal: bool) -> Any:
    if isinstance(value, BaseModel):
        return _dump_model(value, reveal)
    if isinstance(value, SecretStr):
        return value.get_secret_value() if reveal else SECRET_MASK
    if isinstance(value, dict):
        return {key: _dump_value(item, reveal) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_dump_value(item, reveal) for item in value]
    return value


# -- atomic file writes ----------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data`` atomically; on any failure the old file stays intact.

    Writes a temp file in the same directory (created ``0600``, then given ``mode``), flushes and
    fsyncs it, renames it over ``path`` with ``os.replace`` and fsyncs the directory so the rename
    itself is durable. The temp file is removed when anything fails.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_signature(path: Path) -> FileSignature | None:
    """Return ``(mtime_ns, size, inode)`` of ``path``, or None when it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read_optional(path: Path) -> tuple[bytes, FileSignature | None] | None:
    signature = file_signature(path)  # before reading: a later change is then seen again
    try:
        return path.read_bytes(), signature
    except FileNotFoundError:
        return None


def file_mode(path: Path, default: int) -> int:
    """Return the permission bits of ``path``, or ``default`` when it does not exist."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return default


# -- the store -------------------------------------------------------------------------


class _Sync(Enum):
    """Outcome of comparing the file on disk with what the store knows."""

    UNCHANGED = "unchanged"
    APPLIED = "applied"
    INVALID = "invalid"
    MISSING = "missing"


class ConfigStore:
    """The configuration in force, kept identical to its file. See the module docstring."""

    def __init__(
        self,
        path: Path | None,
        config: GatewayConfig,
        *,
        file_config: GatewayConfig | None = None,
        digest: str | None = None,
        overrides: Overrides = apply_env_overrides,
        poll_interval: float = 1.0,
    ) -> None:
        """Hold ``config`` (the running config) backed by the file at ``path`` (None: memory).

        ``file_config`` is the config exactly as the file states it, and ``digest`` the hash of
        the bytes it came from (both given by :meth:`from_loaded`). Without ``file_config`` an
        environment admin token found in ``config`` is not treated as the file's; the file is
        re-read before the first save anyway.
        """
        self.path = path
        self.poll_interval = poll_interval
        self._overrides = overrides
        self._config = config
        self._file_config = file_config if file_config is not None else _strip_env_token(config)
        self._digest = digest
        self._signature: FileSignature | None = None
        self._lock = asyncio.Lock()
        self._listeners: list[ConfigListener] = []
        self._memory_only_logged = False

    @classmethod
    def from_loaded(cls, loaded: LoadedConfig, **kwargs: Any) -> ConfigStore:
        """Build a store from a :class:`~gateway.config.loader.LoadedConfig`."""
        return cls(
            loaded.path,
            loaded.config,
            file_config=loaded.file_config,
            digest=loaded.digest,
            **kwargs,
        )

    # -- reading ---------------------------------------------------------------------

    @property
    def config(self) -> GatewayConfig:
        """Return the configuration in force (overrides applied)."""
        return self._config

    @property
    def file_config(self) -> GatewayConfig:
        """Return the configuration as the file states it (no overrides)."""
        return self._file_config

    @property
    def backup_path(self) -> Path | None:
        """Return where the previous file content is kept (``PATH.bak``)."""
        return self.path.with_name(self.path.name + ".bak") if self.path else None

    def on_change(self, listener: ConfigListener) -> None:
        """Register ``listener(new_config, reason)``, called after each saved or reloaded change.

        Listeners are synchronous and should be quick; one that raises is logged and skipped.
        """
        self._listeners.append(listener)

    # -- changing --------------------------------------------------------------------

    async def update(
        self, change: Callable[[GatewayConfig], GatewayConfig], *, reason: str
    ) -> GatewayConfig:
        """Apply ``change`` to the running config, save it, notify; return the new config.

        ``change`` may raise (``ValueError``, ``pydantic.ValidationError``, anything): the error
        propagates and nothing changes. A save failure raises :class:`ConfigSaveError` and nothing
        changes. A change that yields the current config writes nothing and notifies no one.
        Before applying, a hand edit not yet picked up is reloaded, so it is not overwritten.
        """
        async with self._lock:
            await self._sync_before_write()
            current = self._config
            candidate = change(current)
            if not isinstance(candidate, GatewayConfig):
                raise TypeError(f"change must return a GatewayConfig, not {type(candidate)}")
            new = GatewayConfig.model_validate(candidate.model_dump())
            if new == current:
                return current
            to_save = _rebase(new, current, self._file_config)
            to_save = GatewayConfig.model_validate(to_save.model_dump())
            if problem := exposure_problem(self._overrides(to_save)):
                raise ValueError(problem)
            if self.path is None:
                self._note_memory_only()
            else:
                await self._save(self.path, to_save)
            self._file_config = to_save
            self._config = self._overrides(to_save)
            self._notify(reason)
            return self._config

    async def _save(self, path: Path, config: GatewayConfig) -> None:
        data = to_yaml(config, include_secrets=True).encode()
        secret = has_secrets(config)
        try:
            signature = await asyncio.to_thread(self._write_files, path, data, secret)
        except OSError as exc:
            _log.error("config save failed", path=str(path), error=str(exc))
            raise ConfigSaveError(path, exc) from exc
        self._digest = digest_of(data)
        self._signature = signature

    def _write_files(self, path: Path, data: bytes, secret: bool) -> FileSignature | None:
        """Back up the current file, then replace it (runs in a worker thread)."""
        previous = _read_optional(path)
        if previous is not None and self.backup_path is not None:
            atomic_write_bytes(self.backup_path, previous[0], mode=BACKUP_MODE)
        mode = SECRET_FILE_MODE if secret else file_mode(path, DEFAULT_FILE_MODE)
        atomic_write_bytes(path, data, mode=mode)
        return file_signature(path)

    async def _sync_before_write(self) -> None:
        if self.path is None:
            return
        outcome = await self._sync_from_disk(reason="hand edit picked up before an admin change")
        if outcome is _Sync.INVALID:
            _log.warning(
                "overwriting an invalid hand edit of the config file; it is kept in the backup",
                path=str(self.path),
                backup=str(self.backup_path),
            )

    def _note_memory_only(self) -> None:
        if not self._memory_only_logged:
            self._memory_only_logged = True
            _log.warning(
                "no config file: configuration changes are kept in memory only "
                "and are lost on restart"
            )

    def _notify(self, reason: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(self._config, reason)
            except Exception:  # one broken listener must not hide the change from the others
                _log.exception("config listener failed", reason=reason)

    # -- reloading -------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the file; return True when a changed, valid config was applied.

        Invalid content is refused: an error listing every located problem is logged and the
        running config stays. Content the store wrote or read last is ignored.
        """
        if self.path is None:
            return False
        async with self._lock:
            return await self._sync_from_disk(reason="config file reloaded") is _Sync.APPLIED

    async def _sync_from_disk(self, *, reason: str) -> _Sync:
        assert self.path is not None
        source = str(self.path)
        try:
            found = await asyncio.to_thread(_read_optional, self.path)
        except OSError as exc:
            _log.error("config reload failed: cannot read the file", path=source, error=str(exc))
            return _Sync.INVALID
        if found is None:
            return _Sync.MISSING
        raw, signature = found
        digest = digest_of(raw)
        if digest == self._digest:
            self._signature = signature
            return _Sync.UNCHANGED
        try:
            file_config = validate_document(parse_document(decode(raw, source), source), source)
        except ConfigError as exc:
            self._signature = signature  # seen: the poller waits for the next edit
            _log.error(
                "config file refused: keeping the running configuration",
                path=source,
                problems=exc.lines(),
            )
            return _Sync.INVALID
        effective = self._overrides(file_config)
        if problem := exposure_problem(effective):
            self._signature = signature
            _log.error(
                "config file refused: keeping the running configuration",
                path=source,
                problems=[problem],
            )
            return _Sync.INVALID
        self._digest, self._signature = digest, signature
        self._file_config = file_config
        if effective == self._config:
            return _Sync.UNCHANGED
        self._config = effective
        _log.info("config reloaded from file", path=source, reason=reason)
        self._notify(reason)
        return _Sync.APPLIED

    async def run_watcher(self, stop: asyncio.Event, *, interval: float | None = None) -> None:
        """Poll the file's (mtime_ns, size, inode) until ``stop`` is set; reload on change.

        Polling the path (not an open handle) also follows editors that replace the file by a
        new one; while the file is missing, nothing happens. Errors are logged, never fatal.
        """
        if self.path is None:
            await stop.wait()
            return
        period = self.poll_interval if interval is None else interval
        await self._reload_logged()  # picks up edits made since the file was loaded
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period)
            if stop.is_set():
                return
            current = await asyncio.to_thread(file_signature, self.path)
            if current is not None and current != self._signature:
                await self._reload_logged()

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception:  # the watcher must outlive any surprise
            _log.exception("config reload failed", path=str(self.path))

    @contextlib.asynccontextmanager
    async def watch(self, *, interval: float | None = None) -> AsyncIterator[None]:
        """Run :meth:`run_watcher` in the background for the duration of the ``async with``."""
        stop = asyncio.Event()
        task = spawn(self.run_watcher(stop, interval=interval), name="config-file-watcher")
        try:
            yield
        finally:
            stop.set()
            await task

    def install_sighup(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Reload on SIGHUP; return False where signals are unsupported (Windows, non-main thread).

        Remove with ``loop.remove_signal_handler(signal.SIGHUP)``.
        """
        sighup = getattr(signal, "SIGHUP", None)
        if sighup is None or self.path is None:
            return False
        loop = loop or asyncio.get_running_loop()
        try:
            loop.add_signal_handler(sighup, self._reload_soon)
        except (NotImplementedError, RuntimeError, ValueError):
            return False
        return True

    def _reload_soon(self) -> None:
        _log.info("SIGHUP: reloading the config file", path=str(self.path))
        spawn(self._reload_logged(), name="config-reload-sighup")


# -- helpers ---------------------------------------------------------------------------


def _rebase(new: Any, running: Any, on_file: Any) -> Any:
    """Return ``new`` where every value equal to ``running`` is replaced by ``on_file``'s.

    This keeps runtime overrides (environment token, command-line flags) out of the file while
    saving exactly what a change modified.
    """
    if new == running:
        return on_file
    if not (
        isinstance(new, BaseModel) and type(new) is type(running) and type(new) is type(on_file)
    ):
        return new
    updates = {
        name: _rebase(getattr(new, name), getattr(running, name), getattr(on_file, name))
        for name in type(new).model_fields
    }
    return new.model_copy(update=updates)


def _strip_env_token(config: GatewayConfig) -> GatewayConfig:
    env_token = os.environ.get(ENV_ADMIN_TOKEN, "").strip()
    token = config.admin.token
    if not env_token or token is None or token.get_secret_value() != env_token:
        return config
    admin = config.admin.model_copy(update={"token": None})
    return config.model_copy(update={"admin": admin})
