"""The dashboard's static routes and files, without a browser (these run everywhere)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web

from gateway.dashboard import STATIC_DIR, dashboard_routes, setup_dashboard, static_files

JS_FILES = sorted((STATIC_DIR / "js").glob("*.js"))
MARKUP_SINKS = (
    "innerHTML",
    "outerHTML",
    "insertAdjacentHTML",
    "document.write",
    "eval(",
    "new Function",
)


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    """A client of an app with only the dashboard mounted (plus a catch-all, as in the gateway)."""
    app = web.Application()
    setup_dashboard(app)

    async def proxied(_request: web.Request) -> web.Response:
        return web.Response(text="proxied")

    app.router.add_route("*", "/{tail:.*}", proxied)
    return await aiohttp_client(app)


async def test_page_redirect_and_security_headers(client: Any) -> None:
    """``/gateway`` redirects to ``/gateway/``; the page carries a strict CSP."""
    response = await client.get("/gateway", allow_redirects=False)
    assert response.status == 308
    assert response.headers["Location"] == "/gateway/"
    response = await client.get("/gateway/")
    assert response.status == 200
    assert response.content_type == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert '<script type="module" src="static/js/app.js">' in await response.text()


async def test_static_files_types_and_revalidation(client: Any) -> None:
    """Files are served with explicit types and an ETag; an unchanged file costs a 304."""
    response = await client.get("/gateway/static/js/app.js")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    etag = response.headers["ETag"]
    again = await client.get("/gateway/static/js/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    css = await client.get("/gateway/static/css/dashboard.css")
    assert css.headers["Content-Type"].startswith("text/css")


@pytest.mark.parametrize(
    "path",
    [
        "/gateway/static/nope.js",
        "/gateway/static/%2e%2e/__init__.py",
        "/gateway/static/..%2f__init__.py",
        "/gateway/static/js/",
    ],
)
async def test_only_shipped_files_are_served(client: Any, path: str) -> None:
    """Nothing outside the shipped set is served (no traversal, no listing)."""
    response = await client.get(path)
    text = await response.text()
    assert "__future__" not in text
    # 404 from the dashboard, or the URL was normalized out of /gateway/static/ (-> proxy).
    assert response.status == 404 or text == "proxied"


async def test_other_paths_still_reach_the_proxy(client: Any) -> None:
    """The dashboard takes only its own paths; the rest goes to the catch-all."""
    for path in ("/", "/gateway-other", "/prompt"):
        response = await client.get(path)
        assert await response.text() == "proxied", path


def test_routes_are_route_defs() -> None:
    """``dashboard_routes()`` can be added with ``app.router.add_routes``."""
    app = web.Application()
    app.router.add_routes(dashboard_routes())
    names = {r.name for r in app.router.resources() if r.name}
    assert {"dashboard", "dashboard-static", "dashboard-redirect"} <= names


def test_every_imported_module_and_linked_file_is_shipped() -> None:
    """Every ES module import and every file the page links exists in the package data."""
    shipped = static_files()
    for js in JS_FILES:
        for target in re.findall(r"from '\./([\w.-]+\.js)'", js.read_text()):
            assert f"js/{target}" in shipped, f"{js.name} imports missing {target}"
    page = (STATIC_DIR / "index.html").read_text()
    for target in re.findall(r'(?:src|href)="static/([^"]+)"', page):
        assert target in shipped, target


@pytest.mark.parametrize("js", JS_FILES, ids=lambda p: p.name)
def test_no_markup_sinks_in_the_scripts(js: Any) -> None:
    """API strings are never parsed as markup: no innerHTML and friends, no eval."""
    source = js.read_text()
    code = re.sub(r"//[^\n]*", "", source)  # comments may name what is forbidden
    for sink in MARKUP_SINKS:
        assert sink not in code, f"{js.name} uses {sink}"
