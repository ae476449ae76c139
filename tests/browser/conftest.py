"""Browser-test fixtures: real processes (simulated ComfyUI backends, the gateway) and a real
headless Chromium driven by Playwright.

* The browser is Debian's ``/usr/bin/chromium`` (never a downloaded one); the tests are skipped
  with a clear message only when it is missing. Playwright's Python package is installed with
  pip when absent (the tests install what they need themselves).
* Processes and waits live in :mod:`browser_support`.
* Artifacts (screenshots) go to ``$GATEWAY_ARTIFACTS_DIR`` (default: the test's ``tmp_path``);
  with ``GATEWAY_UPDATE_SCREENSHOTS=1`` the README screenshot ``docs/dashboard.png`` is rewritten.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    UI_TIMEOUT_MS,
    Backend,
    Gateway,
    PageWatch,
    import_playwright,
    require_chromium,
    start_backend,
    start_gateway,
    stop,
)

# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright_api() -> Any:
    """Return ``playwright.sync_api`` (skips without Chromium)."""
    require_chromium()
    return import_playwright()


@pytest.fixture(scope="module")
def browser(playwright_api: Any) -> Iterator[Any]:
    """Yield a headless system Chromium, shared by the tests of one module."""
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def expect(playwright_api: Any) -> Any:
    """Return Playwright's ``expect`` with a generous default timeout."""
    playwright_api.expect.set_options(timeout=UI_TIMEOUT_MS)
    return playwright_api.expect


@pytest.fixture
def artifacts_dir(tmp_path: Path) -> Path:
    """Return where screenshots go: ``$GATEWAY_ARTIFACTS_DIR`` or the test's ``tmp_path``."""
    target = Path(os.environ.get("GATEWAY_ARTIFACTS_DIR") or tmp_path / "artifacts")
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture
def new_page(
    browser: Any, request: pytest.FixtureRequest, artifacts_dir: Path
) -> Iterator[Callable[..., tuple[Any, PageWatch]]]:
    """Return a factory of pages (own browser context each) that records errors and alerts.

    On a test failure a screenshot of every page is saved to the artifacts directory.
    """
    contexts: list[Any] = []
    pages: list[Any] = []

    def make(width: int = 1280, height: int = 900, **options: Any) -> tuple[Any, PageWatch]:
        context = browser.new_context(
            viewport={"width": width, "height": height},
            accept_downloads=True,
            **options,
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        pages.append(page)
        watch = PageWatch()
        page.on("pageerror", lambda error: watch.page_errors.append(str(error)))
        page.on(
            "console",
            lambda msg: watch.console_errors.append(msg.text) if msg.type == "error" else None,
        )

        def on_dialog(dialog: Any) -> None:
            watch.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        return page, watch

    yield make
    failed = getattr(request.node, "rep_call", None)
    for index, page in enumerate(pages):
        if failed is not None and failed.failed:
            with contextlib.suppress(Exception):
                page.screenshot(
                    path=str(artifacts_dir / f"{request.node.name}-failure-{index}.png"),
                    full_page=True,
                )
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item (``rep_call``) for the failure screenshots."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def backends() -> Iterator[Callable[[str], Backend]]:
    """Return a starter of simulated backends; all are stopped at the end of the module."""
    started: list[Backend] = []

    def start(name: str) -> Backend:
        for backend in started:  # reuse a running backend of this name across tests
            if backend.name == name and backend.proc.poll() is None:
                return backend
        backend = start_backend(name)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        stop(backend.proc)


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Return a starter of gateways (see :func:`start_gateway`); stopped after the test."""
    started: list[Gateway] = []
    count = 0

    def start(servers: list[dict[str, Any]], **options: Any) -> Gateway:
        nonlocal count
        count += 1
        directory = tmp_path / f"gateway-{count}"
        directory.mkdir()
        gateway = start_gateway(directory, servers, **options)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        stop(gateway.proc)
