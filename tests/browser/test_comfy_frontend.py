"""The real ComfyUI web frontend (``comfyui-frontend-package``) through the gateway (issue 5).

Headless Debian Chromium, driven by Playwright, opens the gateway in front of two simulated
backends (``a`` serving, ``b`` standby; real processes):

* the page loads with no console error or failed request that the same page loaded directly
  from a backend does not also have (those are the frontend's or the backend's, not the
  gateway's);
* the websocket connects and the frontend adopts the ``sid`` of its first ``status`` frame;
* queuing the model-free workflow (EmptyImage → ImageInvert → SaveImage) shows the result image
  in the page (the Queue sidebar's ``<img>`` from ``/api/view`` and the SaveImage node's preview);
* after ``a`` is SIGKILLed, the same page (no reload, same websocket) queues again and shows the
  new image, served by ``b``.

Screenshots go to ``$GATEWAY_ARTIFACTS_DIR`` (default: the test's tmp dir); with
``GATEWAY_UPDATE_SCREENSHOTS=1`` the result screenshot also replaces ``docs/comfyui-frontend.png``.
The browser tests skip (saying what to install) without Chromium, Playwright or the frontend
package. The first tests need none of them: they check the simulated backend's answers that the
frontend revealed were missing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from frontend_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    FRONTEND_VERSION,
    REPO,
    UI_TIMEOUT_MS,
    PageRecorder,
    Stack,
    frontend_version,
    model_free_workflow,
    require_frontend_tools,
    start_stack,
)

from gateway.testing import FakeComfyOptions, create_fake_comfy_app
from gateway.testing.fake_frontend import BUILTIN_TEMPLATES_INDEX, write_builtin_templates

#: Nodes of the frontend's default graph: without them it opens with "Some Nodes Are Missing".
DEFAULT_GRAPH_NODES = (
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "KSampler",
    "VAEDecode",
    "SaveImage",
)

APP_READY = "() => !!(window.app && window.app.graph && window.comfyAPI && window.app.api)"

#: Registers a listener on the frontend's own API object, so a test can wait for what the
#: frontend itself received (not only what crossed the socket).
LISTEN_EXECUTED = """() => {
  if (window.__gatewayTest) return;
  window.__gatewayTest = { executed: [] };
  window.app.api.addEventListener('executed', (e) => window.__gatewayTest.executed.push(e.detail));
}"""

#: An <img> of the page showing ``/api/view?filename=<name>...``, loaded with real pixels.
IMAGE_SHOWN = """(name) => [...document.querySelectorAll('img')].some((img) =>
  img.src.includes('/api/view?') && img.src.includes('filename=' + encodeURIComponent(name))
  && img.complete && img.naturalWidth > 0)"""

#: The first-run template dialog shows a thumbnail (fetched from ``/templates/``, shown as a blob).
TEMPLATE_THUMBNAIL_SHOWN = """() => [...document.querySelectorAll('[role=dialog] img')].some(
  (img) => img.complete && img.naturalWidth > 0)"""

#: The SaveImage node (id 3 in the workflow) shows the same output on the canvas.
NODE_SHOWS = """(name) => {
  const node = window.app.graph.getNodeById(3);
  return !!node && (node.imgs || []).some((img) =>
    img.src.includes(encodeURIComponent(name)) && img.complete && img.naturalWidth > 0);
}"""


# -- the simulated backend answers what the frontend asks (no browser needed) ------------------


async def test_object_info_has_the_default_graph_nodes() -> None:
    """The frontend's default graph resolves (no "missing nodes" dialog, no registry look-ups);
    with no models a prompt of it fails validation like a real model-free ComfyUI."""
    async with TestClient(TestServer(create_fake_comfy_app(FakeComfyOptions(name="t")))) as c:
        info = await (await c.get("/api/object_info")).json()
        for name in (*DEFAULT_GRAPH_NODES, "EmptyImage", "ImageInvert"):
            assert name in info, name
        loader = info["CheckpointLoaderSimple"]
        assert loader["display_name"] == "Load Checkpoint"
        assert loader["input"]["required"]["ckpt_name"][0] == []
        assert loader["output"] == ["MODEL", "CLIP", "VAE"]
        assert len(loader["output_tooltips"]) == 3
        assert "euler" in info["KSampler"]["input"]["required"]["sampler_name"][0]
        prompt = {
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd.ckpt"}},
            "5": {
                "class_type": "EmptyLatentImage",
                "inputs": {"width": 512, "height": 512, "batch_size": 1},
            },
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
            "9": {
                "class_type": "SaveImage",
                "inputs": {"images": ["8", 0], "filename_prefix": "x"},
            },
        }
        resp = await c.post("/api/prompt", json={"prompt": prompt})
        assert resp.status == 400
        body = await resp.json()
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        assert body["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
        assert (await (await c.get("/api/queue")).json())["queue_pending"] == []
        logs = await (await c.get("/internal/logs/raw")).json()
        assert any("[Prompt Server] web root:" in e["m"] for e in logs["entries"])


def test_builtin_template_has_its_thumbnail(tmp_path: Path) -> None:
    """The template dialog loads ``/templates/<name>-1.<mediaSubtype>`` for each template."""
    root = write_builtin_templates(tmp_path)
    for module in BUILTIN_TEMPLATES_INDEX:
        for template in module["templates"]:
            thumbnail = root / f"{template['name']}-1.{template['mediaSubtype']}"
            assert thumbnail.read_bytes().startswith(b"\x89PNG"), thumbnail
            workflow = json.loads((root / f"{template['name']}.json").read_text())
            assert {n["type"] for n in workflow["nodes"]} == {
                "EmptyImage",
                "ImageInvert",
                "SaveImage",
            }


# -- fixtures of the browser tests ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sync_api() -> Any:
    """``playwright.sync_api`` (skips when Chromium, Playwright or the frontend is missing)."""
    return require_frontend_tools()


@pytest.fixture(scope="module")
def stack(sync_api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Backends ``a`` (preferred) and ``b`` behind a ``comfyui-gateway`` process."""
    started = start_stack(tmp_path_factory.mktemp("frontend-stack"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def chromium(sync_api: Any) -> Iterator[Any]:
    """Headless system Chromium (never a downloaded browser), resolving no internet names."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_frontend(
    chromium: Any, url: str, first_run_screenshot: Path | None = None
) -> tuple[Any, Any, PageRecorder]:
    """Open the frontend at ``url`` in a new context and wait until it has settled.

    Settled: the app is up, its websocket got the ``status`` greeting, the network is idle, the
    first-run template dialog (its thumbnails loaded; screenshot taken when asked) is closed and
    the Logs panel (``/internal/logs``) is open.
    """
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    recorder = PageRecorder(url.rstrip("/")).attach(page)
    page.goto(url)
    page.wait_for_function(APP_READY)
    page.wait_for_function("() => !!window.app.api.clientId")  # set from status.sid
    page.wait_for_load_state("networkidle")
    # Every backend here is fresh, so the frontend shows its first-run template browser
    # (/templates/index.json and a thumbnail).
    dialog = page.get_by_role("dialog").filter(has_text="Get Started with a Template")
    dialog.wait_for()
    page.wait_for_function(TEMPLATE_THUMBNAIL_SHOWN)
    if first_run_screenshot is not None:
        save_screenshot(page, first_run_screenshot)
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    page.get_by_role("button", name="Toggle Bottom Panel").click()
    page.get_by_role("tab", name="Logs").wait_for()
    page.wait_for_load_state("networkidle")
    return context, page, recorder


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$GATEWAY_ARTIFACTS_DIR``, else a temporary directory."""
    configured = os.environ.get("GATEWAY_ARTIFACTS_DIR")
    target = Path(configured) if configured else tmp_path_factory.mktemp("artifacts")
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture(scope="module")
def gateway_page(
    chromium: Any, stack: Stack, artifacts: Path
) -> Iterator[tuple[Any, PageRecorder]]:
    """The frontend opened through the gateway (one page for the module: the failover test
    needs the page and websocket that were already there when the backend died)."""
    context, page, recorder = open_frontend(
        chromium, stack.gateway.url + "/", artifacts / "comfyui-frontend-first-run.png"
    )
    page.evaluate(LISTEN_EXECUTED)
    try:
        yield page, recorder
    finally:
        context.close()


def save_screenshot(page: Any, path: Path, *, readme: bool = False) -> Path:
    """Screenshot to ``path`` (and to ``docs/comfyui-frontend.png`` when asked to and
    ``GATEWAY_UPDATE_SCREENSHOTS=1``)."""
    page.mouse.move(760, 620)  # an empty spot of the canvas: no hover tooltip in the picture
    page.locator(".p-tooltip").first.wait_for(state="hidden")
    page.screenshot(path=str(path))
    if readme and os.environ.get("GATEWAY_UPDATE_SCREENSHOTS") == "1":
        docs = REPO / "docs"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(path, docs / "comfyui-frontend.png")
    return path


def show_queue_sidebar(page: Any) -> None:
    """Open the Queue sidebar (it lists each finished prompt's output as an ``<img>``)."""
    if not page.locator(".queue-tab-button.side-bar-button-selected").count():
        page.get_by_role("button", name="Queue (q)").click()
    page.locator(".queue-tab-button.side-bar-button-selected").wait_for()


def queue_and_see(page: Any, filename_prefix: str) -> tuple[str, str]:
    """Load the model-free workflow, queue it with the frontend's own API, and wait until its
    image shows in the page (Queue sidebar and SaveImage node). Returns ``(prompt_id, output
    filename)``."""
    show_queue_sidebar(page)
    page.evaluate("(wf) => window.app.loadGraphData(wf)", model_free_workflow(filename_prefix))
    with page.expect_response(
        lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST"
    ) as answer:
        page.evaluate("() => window.app.queuePrompt(0)")
    response = answer.value
    assert response.status == 200, f"POST /api/prompt: {response.status} {response.text()}"
    prompt_id = response.json()["prompt_id"]
    page.wait_for_function(
        "(id) => window.__gatewayTest.executed.some((d) => d.prompt_id === id)", arg=prompt_id
    )
    executed = page.evaluate(
        "(id) => window.__gatewayTest.executed.find((d) => d.prompt_id === id)", prompt_id
    )
    filename = executed["output"]["images"][0]["filename"]
    assert filename.startswith(f"{filename_prefix}_"), executed
    page.wait_for_function(IMAGE_SHOWN, arg=filename)
    page.wait_for_function(NODE_SHOWS, arg=filename)
    return prompt_id, filename


# -- browser tests -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_page_loads_through_the_gateway_like_direct(
    chromium: Any, stack: Stack, gateway_page: tuple[Any, PageRecorder], artifacts: Path
) -> None:
    """No console error or failed request through the gateway that direct loading lacks."""
    page, through = gateway_page
    # The same page straight from backend b (fresh, like a: both show the first-run state).
    context, _direct_page, direct = open_frontend(chromium, stack.backends["b"].url + "/")
    context.close()
    version = f"(frontend {frontend_version()}, expected {FRONTEND_VERSION})"

    extra_errors = through.error_keys() - direct.error_keys()
    assert not extra_errors, (
        f"console errors through the gateway only {version}:\n"
        + "\n".join(f"  {text}  [{where}]" for text, where in sorted(extra_errors))
        + f"\ndirect had: {sorted(direct.error_keys())}"
    )
    direct_statuses = direct.statuses()
    regressions = {
        key: status
        for key, status in through.http_failures().items()
        if key in direct_statuses and any(s < 400 for s in direct_statuses[key])
    }
    assert not regressions, f"4xx/5xx through the gateway that succeed direct: {regressions}"
    unknown = {k: s for k, s in through.http_failures().items() if k not in direct_statuses}
    assert not unknown, f"failed requests through the gateway the direct page never made: {unknown}"
    local_failures = [
        f for f in through.failed_requests if f[1].startswith("/") and "ABORTED" not in f[2]
    ]
    assert not local_failures, f"requests to the gateway that failed: {local_failures}"

    # What the frontend needed at start was answered through the gateway.
    answered = through.statuses()
    for path in (
        "/api/users",
        "/api/settings",
        "/api/i18n",
        "/api/extensions",
        "/api/object_info",
        "/api/system_stats",
        "/api/experiment/models",
        "/api/workflow_templates",
        "/templates/index.json",
        "/internal/logs/raw",
    ):
        assert answered.get(("GET", path)) == {200}, (path, answered.get(("GET", path)))
    assert answered.get(("PATCH", "/internal/logs/subscribe")) == {200}
    missing = page.evaluate(
        "(names) => names.filter((n) => !window.LiteGraph.registered_node_types[n])",
        list(DEFAULT_GRAPH_NODES),
    )
    assert missing == [], f"node types the frontend did not register: {missing}"
    # The startup log line came through /internal/logs/raw into the Logs terminal.
    page.locator(".xterm").get_by_text("[Prompt Server] web root").first.wait_for()
    save_screenshot(page, artifacts / "comfyui-frontend-loaded.png")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_websocket_connects(gateway_page: tuple[Any, PageRecorder]) -> None:
    """The frontend's ``/ws`` through the gateway greets with ``status`` and its ``sid`` sticks."""
    page, recorder = gateway_page
    assert recorder.sockets, "the frontend opened no websocket"
    socket = recorder.sockets[0]
    assert socket.url.startswith("/ws"), socket.url
    assert not socket.closed, "the frontend's websocket closed"
    greeting = next((f for f in socket.frames if f.get("type") == "status"), None)
    assert greeting is not None, f"no status frame: {socket.frames[:5]}"
    sid = greeting["data"]["sid"]
    assert greeting["data"]["status"]["exec_info"]["queue_remaining"] == 0
    assert page.evaluate("() => window.app.api.clientId") == sid
    assert page.evaluate("() => sessionStorage.getItem('clientId')") == sid
    # The feature-flag handshake the frontend starts was answered through the gateway.
    assert any(f.get("type") == "feature_flags" for f in socket.frames), socket.frames[:5]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_queued_workflow_shows_its_image(
    stack: Stack, gateway_page: tuple[Any, PageRecorder], artifacts: Path
) -> None:
    """Queue EmptyImage → ImageInvert → SaveImage: the result image shows in the page."""
    page, recorder = gateway_page
    errors_before, answers_before = recorder.error_keys(), len(recorder.responses)
    _prompt_id, filename = queue_and_see(page, "through_gateway")
    assert stack.gateway.readyz()["serving"] == "a"
    assert recorder.error_keys() <= errors_before, recorder.error_keys() - errors_before
    assert not recorder.http_failures(answers_before), recorder.http_failures(answers_before)
    # The Logs panel follows the backend's log through the gateway's websocket.
    page.locator(".xterm").get_by_text("got prompt").first.wait_for()
    page.get_by_role("button", name="Toggle Bottom Panel").click()  # room for the graph
    page.get_by_role("tab", name="Logs").wait_for(state="hidden")
    assert filename
    save_screenshot(page, artifacts / "comfyui-frontend-result.png", readme=True)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_keeps_working_after_the_active_backend_is_killed(
    stack: Stack, gateway_page: tuple[Any, PageRecorder], artifacts: Path
) -> None:
    """SIGKILL backend a; the same page (no reload, same websocket) queues again and shows the
    new image, now from backend b."""
    page, recorder = gateway_page
    stack.wait_serving("a", {"a", "b"})
    sockets_before = len(recorder.sockets)
    assert sockets_before == 1
    assert not recorder.sockets[0].closed
    navigations = page.evaluate("() => performance.getEntriesByType('navigation').length")
    errors_before, answers_before = recorder.error_keys(), len(recorder.responses)

    stack.kill("a")
    prompt_id, filename = queue_and_see(page, "after_failover")

    stack.wait_serving("b", {"b"})
    assert len(recorder.sockets) == sockets_before, "the frontend had to open a new websocket"
    assert not recorder.sockets[0].closed, "the frontend's websocket closed"
    assert page.evaluate("() => performance.getEntriesByType('navigation').length") == navigations
    assert recorder.error_keys() <= errors_before, recorder.error_keys() - errors_before
    assert not recorder.http_failures(answers_before), recorder.http_failures(answers_before)
    executed = [f for f in recorder.sockets[0].frames if f.get("type") == "executed"]
    assert any(f["data"]["prompt_id"] == prompt_id for f in executed), executed
    sources = page.evaluate(
        "(name) => [...document.querySelectorAll('img')].map((i) => i.src)"
        ".filter((src) => src.includes('filename=' + encodeURIComponent(name)))",
        filename,
    )
    assert sources, f"no <img> shows {filename}"
    assert all(src.startswith(stack.gateway.url + "/api/view?") for src in sources), sources
    save_screenshot(page, artifacts / "comfyui-frontend-after-failover.png")
