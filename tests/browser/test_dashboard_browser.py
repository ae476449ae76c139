"""The dashboard at /gateway/, driven in headless Chromium against real gateway and backend
processes (issue 5 §3): add, test, select, edit, delete (refused for the active server), test
all, export then import, settings, a killed backend, the token prompt, inert server names,
keyboard use, and screenshots for the artifacts and the README.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser_support import REPO, Backend, Gateway, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

XSS_NAME = "<img src=x onerror=alert(1)>"


# -- helpers -------------------------------------------------------------------------------------


def server(backend: Backend | None, sid: str, name: str, **extra: Any) -> dict[str, Any]:
    """A server entry for a gateway config (``backend`` None: nothing listens at its URL)."""
    url = backend.url if backend else f"http://127.0.0.1:{free_port()}"
    return {"id": sid, "name": name, "url": url, **extra}


def open_dashboard(page: Any, gateway: Gateway, expect: Any) -> None:
    """Open the dashboard and wait until it shows the servers and follows the live stream."""
    page.goto(gateway.dashboard)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect(page.locator("#servers-summary")).to_contain_text("server")


def card(page: Any, name: str) -> Any:
    """The card of the server with this display name."""
    return page.locator("li.card").filter(has=page.get_by_role("heading", name=name, exact=True))


def state_of(page: Any, name: str) -> Any:
    """The state pill of a server's card."""
    return card(page, name).locator(".state-pill .state-text")


def only_http_noise(messages: list[str]) -> list[str]:
    """Console errors other than the browser's own 'Failed to load resource' for 4xx answers."""
    return [m for m in messages if "Failed to load resource" not in m]


# -- scenarios -------------------------------------------------------------------------------------


def test_add_test_select_and_edit_a_server(
    backends: Any, gateways: Any, new_page: Any, expect: Any
) -> None:
    """Add a server (with a validation error first, and a test before saving), see it go up,
    select it as the active server, then edit it."""
    a, b = backends("a"), backends("b")
    gw = gateways([server(a, "gpu-a", "GPU A")], active="gpu-a")
    page, watch = new_page()
    open_dashboard(page, gw, expect)
    expect(state_of(page, "GPU A")).to_have_text("Up")
    expect(card(page, "GPU A").locator(".badge-serving")).to_be_visible()

    # The add form: the API's 422 field error is shown next to the URL field.
    page.get_by_role("button", name="+ Add server").click()
    dialog = page.locator("#server-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Name").fill("GPU B")
    dialog.get_by_label("URL").fill("ftp://nowhere.example")
    dialog.get_by_role("button", name="Add server", exact=True).click()
    expect(page.locator("#f-url-error")).to_contain_text("http")
    expect(dialog.get_by_label("URL")).to_have_attribute("aria-invalid", "true")
    assert [s["id"] for s in gw.api("GET", "servers")["servers"]] == ["gpu-a"]

    # Test the unsaved values, then save.
    dialog.get_by_label("URL").fill(b.url)
    dialog.get_by_role("button", name="Test", exact=True).click()
    result = page.locator("#server-test-result")
    expect(result).to_contain_text("Test passed")
    expect(result).to_contain_text("ComfyUI")
    expect(result).to_contain_text("WebSocket OK")
    dialog.get_by_role("button", name="Add server", exact=True).click()
    expect(dialog).to_be_hidden()
    expect(state_of(page, "GPU B")).to_have_text("Up")
    expect(card(page, "GPU B").locator(".stat-version")).not_to_have_text("—")

    # Select it: preferred and serving move to it.
    page.get_by_role("radio", name="Use GPU B as the active server").check()
    expect(card(page, "GPU B").locator(".badge-preferred")).to_be_visible()
    expect(card(page, "GPU B").locator(".badge-serving")).to_be_visible()
    expect(card(page, "GPU A").locator(".badge-serving")).to_be_hidden()
    listing = gw.api("GET", "servers")
    assert (listing["preferred"], listing["serving"]) == ("gpu-b", "gpu-b")

    # Edit it with the same form.
    card(page, "GPU B").get_by_role("button", name="Edit GPU B").click()
    expect(dialog.get_by_label("Name")).to_have_value("GPU B")
    expect(dialog.locator("#f-id")).to_have_attribute("readonly", "")
    dialog.get_by_label("Name").fill("GPU B (renamed)")
    dialog.get_by_label("Priority").fill("5")
    dialog.get_by_role("button", name="Save changes").click()
    expect(dialog).to_be_hidden()
    expect(card(page, "GPU B (renamed)")).to_be_visible()
    saved = gw.api("GET", "servers/gpu-b")
    assert (saved["name"], saved["priority"]) == ("GPU B (renamed)", 5)
    assert "GPU B (renamed)" in gw.config_path.read_text()
    expect(page.locator("#event-log")).to_contain_text("added")
    assert watch.page_errors == []
    assert only_http_noise(watch.console_errors) == []


def test_credentials_are_masked_kept_and_removable(
    backends: Any, gateways: Any, new_page: Any, expect: Any
) -> None:
    """Credentials entered in the form are saved, shown masked, kept by an unrelated edit, and
    removed when their field is cleared."""
    a, b = backends("a"), backends("b")
    gw = gateways([server(a, "gpu-a", "GPU A")], active="gpu-a")
    page, watch = new_page()
    open_dashboard(page, gw, expect)
    dialog = page.locator("#server-dialog")

    page.get_by_role("button", name="+ Add server").click()
    dialog.get_by_label("Name").fill("Cloud GPU")
    dialog.get_by_label("URL").fill(b.url)
    dialog.locator("summary").click()
    dialog.get_by_label("Bearer token").fill("bearer-secret-1")
    dialog.get_by_label("Extra headers").fill("X-Api-Key: header-secret-2\nX-Team: render")
    dialog.get_by_role("button", name="Test", exact=True).click()
    expect(page.locator("#server-test-result")).to_contain_text("Test passed")
    dialog.get_by_role("button", name="Add server", exact=True).click()
    expect(state_of(page, "Cloud GPU")).to_have_text("Up")
    listed = gw.api("GET", "servers/cloud-gpu")
    assert listed["auth"]["bearer_token"] == "********"
    assert "bearer-secret-1" not in gw.api("GET", "servers", raw=True)

    # An unrelated edit keeps the secrets (the form sends the masks back).
    card(page, "Cloud GPU").get_by_role("button", name="Edit Cloud GPU").click()
    expect(dialog.get_by_label("Bearer token")).to_have_value("********")
    dialog.get_by_label("Priority").fill("3")
    dialog.get_by_role("button", name="Save changes").click()
    expect(dialog).to_be_hidden()
    saved = yaml.safe_load(gw.config_path.read_text())["servers"][1]
    assert saved["priority"] == 3
    assert saved["auth"]["bearer_token"] == "bearer-secret-1"
    assert saved["auth"]["headers"]["X-Api-Key"] == "header-secret-2"

    # Clearing a field removes that credential only.
    card(page, "Cloud GPU").get_by_role("button", name="Edit Cloud GPU").click()
    dialog.get_by_label("Bearer token").fill("")
    dialog.get_by_label("Extra headers").fill("X-Api-Key: ********")
    dialog.get_by_role("button", name="Save changes").click()
    expect(dialog).to_be_hidden()
    saved = yaml.safe_load(gw.config_path.read_text())["servers"][1]
    assert "bearer_token" not in (saved.get("auth") or {})
    assert saved["auth"]["headers"] == {"X-Api-Key": "header-secret-2"}
    assert watch.page_errors == []


def test_a_disabled_server_cannot_be_selected(
    backends: Any, gateways: Any, new_page: Any, expect: Any
) -> None:
    """Selecting a disabled server is refused with a message, and the radios stay as they were."""
    a, b = backends("a"), backends("b")
    gw = gateways(
        [server(a, "gpu-a", "GPU A"), server(b, "gpu-b", "GPU B", enabled=False)],
        active="gpu-a",
    )
    page, watch = new_page()
    open_dashboard(page, gw, expect)
    expect(card(page, "GPU B").locator(".badge-disabled")).to_be_visible()
    page.get_by_role("radio", name="Use GPU B as the active server").click()
    expect(page.locator("#toast")).to_contain_text("Could not select GPU B")
    expect(page.locator("#toast")).to_contain_text("disabled")
    expect(page.get_by_role("radio", name="Use GPU A as the active server")).to_be_checked()
    expect(page.get_by_role("radio", name="Use GPU B as the active server")).not_to_be_checked()
    assert gw.api("GET", "servers")["preferred"] == "gpu-a"
    assert watch.page_errors == []


def test_delete_is_refused_for_the_active_server_and_works_for_another(
    backends: Any, gateways: Any, new_page: Any, expect: Any
) -> None:
    """The active server cannot be deleted (clear message, nothing changes); another can."""
    a, b = backends("a"), backends("b")
    gw = gateways([server(a, "gpu-a", "GPU A"), server(b, "gpu-b", "GPU B")], active="gpu-a")
    page, watch = new_page()
    open_dashboard(page, gw, expect)
    confirm = page.locator("#confirm-dialog")

    card(page, "GPU A").get_by_role("button", name="Delete GPU A").click()
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("GPU A")
    confirm.get_by_role("button", name="Delete", exact=True).click()
    expect(page.locator("#confirm-error")).to_contain_text("active server and cannot be deleted")
    expect(confirm.get_by_role("button", name="Delete", exact=True)).to_be_disabled()
    confirm.get_by_role("button", name="Cancel").click()
    expect(confirm).to_be_hidden()
    expect(card(page, "GPU A")).to_be_visible()
    assert len(gw.api("GET", "servers")["servers"]) == 2

    card(page, "GPU B").get_by_role("button", name="Delete GPU B").click()
    confirm.get_by_role("button", name="Delete", exact=True).click()
    expect(confirm).to_be_hidden()
    expect(card(page, "GPU B")).to_have_count(0)
    assert [s["id"] for s in gw.api("GET", "servers")["servers"]] == ["gpu-a"]
    assert "gpu-b" not in gw.config_path.read_text()
    # Keyboard users land somewhere sensible when the button they came from is gone.
    assert page.evaluate("document.activeElement.id") == "servers-heading"
    assert watch.page_errors == []


def test_test_all_shows_a_result_on_every_card(
    backends: Any, gateways: Any, new_page: Any, expect: Any
) -> None:
    """'Test all' tests every server now and shows each result on its card."""
    a = backends("a")
    gw = gateways(
        [server(a, "gpu-a", "GPU A"), server(None, "offline", "Offline box")], active="gpu-a"
    )
    page, watch = new_page()
    open_dashboard(page, gw, expect)
    page.get_by_role("button", name="Test all").click()
    expect(card(page, "GPU A").locator(".card-test")).to_contain_text("Reachable")
    expect(card(page, "GPU A").locator(".card-test")).to_have_attribute("data-ok", "true")
    expect(card(page, "Offline box").locator(".card-test")).to_contain_text("Unreachable")
    expect(card(page, "Offline box").locator(".card-test")).to_have_attribute("data-ok", "false")
    expect(page.locator("#toast")).to_contain_text("1 of 2 servers passed")
    assert watch.page_errors == []


def test_export_then_import_and_a_bad_file_changes_nothing(
    backends: Any, gateways: Any, new_page: Any, expect: Any, tmp_path: Path
) -> None:
    """Export downloads the YAML; importing a bad file lists its errors and changes nothing;
    importing the export restores a deleted server."""
    a, b = backends("a"), backends("b")
    gw = gateways([server(a, "gpu-a", "GPU A"), server(b, "gpu-b", "GPU B")], active="gpu-a")
    page, watch = new_page()
    open_dashboard(page, gw, expect)

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".yaml")
    exported = tmp_path / "exported.yaml"
    download.save_as(exported)
    document = yaml.safe_load(exported.read_text())
    assert [s["id"] for s in document["servers"]] == ["gpu-a", "gpu-b"]

    # Another admin deletes GPU B: the card disappears live (SSE), no reload.
    gw.api("DELETE", "servers/gpu-b")
    expect(card(page, "GPU B")).to_have_count(0)

    bad = tmp_path / "bad.yaml"
    bad.write_text("servers:\n  - id: Not A Valid Id!\n    url: ftp://example.com\n")
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import…").click()
    chooser.value.set_files(str(bad))
    importer = page.locator("#import-dialog")
    expect(importer).to_be_visible()
    expect(importer).to_contain_text("bad.yaml")
    importer.get_by_role("button", name="Import", exact=True).click()
    errors = page.locator("#import-errors")
    expect(errors).to_be_visible()
    expect(errors).to_contain_text("Nothing was changed")
    expect(page.locator("#import-errors-list li").first).to_contain_text("servers[0]")
    assert [s["id"] for s in gw.api("GET", "servers")["servers"]] == ["gpu-a"]
    importer.get_by_role("button", name="Cancel").click()
    expect(importer).to_be_hidden()

    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import…").click()
    chooser.value.set_files(str(exported))
    importer.get_by_label("Replace").check()
    importer.get_by_role("button", name="Import", exact=True).click()
    expect(importer).to_be_hidden()
    expect(page.locator("#toast")).to_contain_text("added gpu-b")
    expect(state_of(page, "GPU B")).to_have_text("Up")
    assert [s["id"] for s in gw.api("GET", "servers")["servers"]] == ["gpu-a", "gpu-b"]
    assert watch.page_errors == []


def test_auto_switch_and_failback_settings_are_saved(
    backends: Any, gateways: Any, new_page: Any, expect: Any
) -> None:
    """The auto-switch toggle, failback policy and hold time are PATCHed and persist."""
    a = backends("a")
    gw = gateways([server(a, "gpu-a", "GPU A")], active="gpu-a")
    page, watch = new_page()
    open_dashboard(page, gw, expect)

    toggle = page.get_by_role("switch", name="Auto-switch on failure")
    expect(toggle).to_be_checked()
    expect(toggle).to_be_enabled()
    toggle.uncheck()
    expect(page.locator("#toast")).to_contain_text("Auto-switch on failure is off")
    assert gw.api("GET", "settings")["failover"]["auto_switch"] is False

    page.get_by_label("Failback").select_option("manual")
    expect(page.locator("#toast")).to_contain_text("Failback is manual")
    hold = page.get_by_label("Hold (seconds)")
    hold.fill("12")
    hold.press("Enter")
    expect(page.locator("#toast")).to_contain_text("Failback hold is 12 s")
    failover = gw.api("GET", "settings")["failover"]
    assert (failover["failback"], failover["failback_hold"]) == ("manual", 12)
    saved = yaml.safe_load(gw.config_path.read_text())
    assert saved["failover"]["auto_switch"] is False

    page.reload()
    expect(page.get_by_role("switch", name="Auto-switch on failure")).not_to_be_checked()
    expect(page.get_by_label("Failback")).to_have_value("manual")
    expect(page.get_by_label("Hold (seconds)")).to_have_value("12")
    assert watch.page_errors == []


def test_killed_backend_turns_down_and_serving_moves(
    backends: Any, gateways: Any, new_page: Any, expect: Any, artifacts_dir: Path
) -> None:
    """Kill the serving backend by PID: its card turns down within seconds, the serving badge
    moves to the other server, and the event log shows the failover."""
    victim, spare = backends("victim"), backends("spare")
    gw = gateways(
        [server(victim, "main", "Main GPU", priority=10), server(spare, "spare", "Spare GPU")],
        active="main",
    )
    page, watch = new_page()
    open_dashboard(page, gw, expect)
    expect(state_of(page, "Main GPU")).to_have_text("Up")
    expect(state_of(page, "Spare GPU")).to_have_text("Up")
    expect(card(page, "Main GPU").locator(".badge-serving")).to_be_visible()

    started = time.monotonic()
    victim.kill()
    expect(state_of(page, "Main GPU")).to_have_text("Down", timeout=10_000)
    took = time.monotonic() - started
    expect(card(page, "Spare GPU").locator(".badge-serving")).to_be_visible(timeout=10_000)
    expect(card(page, "Main GPU").locator(".badge-serving")).to_be_hidden()
    expect(card(page, "Main GPU").locator(".badge-preferred")).to_be_visible()
    expect(card(page, "Main GPU")).to_have_attribute("data-state", "down")
    expect(card(page, "Main GPU").locator(".last-error")).to_be_visible()
    expect(page.locator("#event-log")).to_contain_text("Main GPU is down")
    expect(page.locator("#event-log .log-tag", has_text="Failover")).to_have_count(1)
    expect(page.locator("#servers-summary")).to_contain_text("serving: Spare GPU")
    page.screenshot(path=str(artifacts_dir / "dashboard-failover.png"), full_page=True)
    assert took < 10, f"the card took {took:.1f} s to turn down"
    assert watch.page_errors == []


def test_server_names_and_api_strings_are_rendered_inert(
    backends: Any, gateways: Any, new_page: Any, expect: Any
) -> None:
    """A server named like markup shows as that text everywhere: no element, no script."""
    a, b = backends("a"), backends("b")
    gw = gateways([server(a, "gpu-a", "GPU A")], active="gpu-a")
    gw.api("POST", "servers", {"name": XSS_NAME, "url": b.url})
    page, watch = new_page()
    open_dashboard(page, gw, expect)
    evil = card(page, XSS_NAME)
    expect(evil).to_be_visible()
    expect(evil.locator(".card-name")).to_have_text(XSS_NAME)
    # Added while the page is open: the event log and a live refresh render it too.
    gw.api("PATCH", f"servers/{gw.api('GET', 'servers')['servers'][1]['id']}", {"priority": 7})
    expect(page.locator("#event-log")).to_contain_text(XSS_NAME)
    evil.get_by_role("button", name=f"Edit {XSS_NAME}").click()
    expect(page.locator("#server-dialog-title")).to_have_text(f"Edit {XSS_NAME}")
    page.keyboard.press("Escape")
    evil.get_by_role("button", name=f"Delete {XSS_NAME}").click()
    expect(page.locator("#confirm-text")).to_contain_text(XSS_NAME)
    page.keyboard.press("Escape")
    assert page.locator("main img, dialog img").count() == 0
    assert watch.dialogs == []
    assert watch.page_errors == []


def test_token_prompt_when_the_api_needs_one(
    backends: Any, gateways: Any, new_page: Any, expect: Any
) -> None:
    """Protected reads: the page asks for the token (refusing a wrong one), keeps it in
    sessionStorage only, and then works. Public reads: the prompt comes at the first write."""
    a = backends("a")
    token = "browser-test-token-1234"
    gw = gateways(
        [server(a, "gpu-a", "GPU A")],
        active="gpu-a",
        admin={"token": token, "protect_reads": True},
    )
    page, watch = new_page()
    page.goto(gw.dashboard)
    prompt = page.get_by_role("dialog", name="Admin token")
    expect(prompt).to_be_visible()
    prompt.get_by_label("Token").fill("wrong-token")
    prompt.get_by_role("button", name="Use token").click()
    expect(page.locator("#token-error")).to_contain_text("not accepted")
    prompt.get_by_label("Token").fill(token)
    prompt.get_by_role("button", name="Use token").click()
    expect(prompt).to_be_hidden()
    expect(state_of(page, "GPU A")).to_have_text("Up")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    assert page.evaluate("Object.values(sessionStorage)") == [token]
    assert page.evaluate("localStorage.length") == 0
    assert token not in page.evaluate("document.cookie")

    # Public reads, protected writes: the page loads, the first change asks for the token.
    gw2 = gateways([server(a, "gpu-a", "GPU A")], active="gpu-a", admin={"token": token})
    page2, watch2 = new_page()
    open_dashboard(page2, gw2, expect)
    expect(page2.get_by_role("dialog", name="Admin token")).to_be_hidden()
    page2.get_by_role("button", name="Test all").click()
    prompt2 = page2.get_by_role("dialog", name="Admin token")
    expect(prompt2).to_be_visible()
    prompt2.get_by_label("Token").fill(token)
    prompt2.get_by_role("button", name="Use token").click()
    expect(card(page2, "GPU A").locator(".card-test")).to_contain_text("Reachable")
    assert watch.page_errors == []
    assert watch2.page_errors == []


def test_keyboard_use_and_labels(backends: Any, gateways: Any, new_page: Any, expect: Any) -> None:
    """Dialogs open and close from the keyboard with focus handled; every control is labelled;
    arrow keys in the radio group select the active server."""
    a, b = backends("a"), backends("b")
    gw = gateways([server(a, "gpu-a", "GPU A"), server(b, "gpu-b", "GPU B")], active="gpu-a")
    page, watch = new_page()
    open_dashboard(page, gw, expect)

    page.get_by_role("button", name="+ Add server").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#server-dialog")).to_be_visible()
    assert page.evaluate("document.activeElement.id") == "f-name"
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter((el) => el.type !== 'file' && el.type !== 'hidden')
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
            .map((el) => el.id || el.name)"""
    )
    assert unlabelled == []
    page.keyboard.press("Escape")
    expect(page.locator("#server-dialog")).to_be_hidden()
    assert page.evaluate("document.activeElement.id") == "add-server"

    radio_a = page.get_by_role("radio", name="Use GPU A as the active server")
    expect(radio_a).to_be_checked()
    radio_a.focus()
    page.keyboard.press("ArrowDown")
    expect(card(page, "GPU B").locator(".badge-preferred")).to_be_visible()
    assert gw.api("GET", "servers")["preferred"] == "gpu-b"
    # State is text, not only colour, and status changes are announced.
    expect(page.locator("#announcer")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#announcer")).to_contain_text("GPU B is now the active server")
    assert watch.page_errors == []


def test_screenshots_desktop_and_phone(
    backends: Any, gateways: Any, new_page: Any, expect: Any, artifacts_dir: Path
) -> None:
    """Screenshots at laptop and phone width (artifacts; docs/dashboard.png on request); the
    phone layout has no horizontal scrolling."""
    a, b = backends("render-a"), backends("render-b")
    gw = gateways(
        [
            server(a, "render-a", "Render box A", priority=10),
            server(b, "render-b", "Render box B", priority=20),
            server(None, "workstation", "Old workstation", priority=30),
        ],
        active="render-a",
    )
    page, watch = new_page(1280, 900)
    open_dashboard(page, gw, expect)
    expect(state_of(page, "Render box A")).to_have_text("Up")
    expect(state_of(page, "Render box B")).to_have_text("Up")
    expect(state_of(page, "Old workstation")).to_have_text("Down")
    # Let the sparklines draw a few points (each check is a live event).
    page.wait_for_function(
        """() => [...document.querySelectorAll('.spark-latency')]
            .filter((p) => p.points.numberOfItems >= 12).length >= 2""",
        timeout=30_000,
    )
    desktop = artifacts_dir / "dashboard-desktop.png"
    page.screenshot(path=str(desktop), full_page=True)

    phone, phone_watch = new_page(375, 812, is_mobile=True, has_touch=True)
    open_dashboard(phone, gw, expect)
    expect(state_of(phone, "Old workstation")).to_have_text("Down")
    phone.screenshot(path=str(artifacts_dir / "dashboard-phone.png"), full_page=True)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 375

    if os.environ.get("GATEWAY_UPDATE_SCREENSHOTS") == "1":
        readme_shot = REPO / "docs" / "dashboard.png"
        readme_shot.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(readme_shot), full_page=False)
    assert desktop.stat().st_size > 10_000
    assert watch.page_errors == []
    assert phone_watch.page_errors == []
    assert only_http_noise(watch.console_errors) == []


def test_sparkline_draws_latency_queue_and_failed_checks(
    gateways: Any, new_page: Any, expect: Any
) -> None:
    """The sparkline module, fed synthetic checks: a latency line broken where checks failed,
    the queue as an area, failed checks marked, and a text description."""
    gw = gateways([server(None, "x", "X")])
    page, watch = new_page()
    open_dashboard(page, gw, expect)
    drawn = page.evaluate(
        """async () => {
            const m = await import('./static/js/sparkline.js');
            const history = new m.History(600);
            const t0 = 1000;
            for (let i = 0; i < 40; i += 1) {
                const failed = i >= 20 && i < 25;
                history.add('s', t0 + i * 15, {
                    latency: failed ? null : 0.01 + (i % 5) / 1000,
                    queue: i % 10, ok: !failed,
                });
            }
            const svg = m.sparkline(history.samples('s'), history.range(), 'label');
            return {
                lines: svg.querySelectorAll('polyline.spark-latency').length,
                queue: svg.querySelectorAll('path.spark-queue').length,
                downs: svg.querySelectorAll('rect.spark-down').length,
                kept: history.samples('s').length,
                range: history.range(),
                text: m.describeHistory(history.samples('s'), history.range()),
                trimmed: (() => {
                    for (let i = 40; i <= 80; i += 1) history.add('s', t0 + i * 15, {ok: true});
                    return history.range();
                })(),
                kept_after: history.samples('s').length,
            };
        }"""
    )
    assert drawn["lines"] == 2  # before and after the outage
    assert drawn["queue"] == 1
    assert drawn["downs"] == 5
    assert drawn["range"] == [1000, 1585]  # less than 10 minutes seen: all of it
    assert drawn["kept"] == 40
    # 20 minutes of checks: the window is the last 10, older samples are dropped (one kept
    # before the window so the line enters from the left edge).
    assert drawn["trimmed"] == [2200 - 600, 2200]
    assert drawn["kept_after"] == 42
    assert "5 failed" in drawn["text"]
    assert "queue peak 9" in drawn["text"]
    assert watch.page_errors == []


def test_dashboard_assets_are_served_with_a_strict_policy(gateways: Any) -> None:
    """The page and its files are served by the gateway itself, with a CSP and nosniff."""
    import urllib.request

    gw = gateways([server(None, "x", "X")])
    with urllib.request.urlopen(gw.dashboard) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        page = response.read().decode()
    for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', page):
        with urllib.request.urlopen(gw.dashboard + asset) as response:
            assert response.status == 200
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    with urllib.request.urlopen(gw.dashboard + "static/js/app.js") as response:
        assert response.headers["Content-Type"].startswith("text/javascript")
