"""The web dashboard at ``/gateway/``: static files only, everything else is the admin API.

The dashboard is plain HTML, CSS and JavaScript modules shipped as package data in
``gateway/dashboard/static/`` (no build step, no CDN, nothing fetched from the network at run
time). The page talks to the admin REST API under ``/gateway/api/`` and follows its Server-Sent
Events stream; this module only serves the files.

Mounting (in :func:`gateway.app.create_app`, *before* the catch-all proxy route)::

    from gateway.dashboard import setup_dashboard

    setup_dashboard(app)  # GET /gateway, /gateway/, /gateway/static/{path}

or, equivalently, ``app.router.add_routes(dashboard_routes())``.

Routes:

* ``GET /gateway`` redirects to ``/gateway/`` (so the page's relative URLs resolve);
* ``GET /gateway/`` (and ``/gateway/index.html``) serves the page;
* ``GET /gateway/static/{path}`` serves one of the shipped files. The set of files is fixed when
  the module is imported: a request can only ever name one of them (no path traversal, no
  directory listing), and content types are explicit (module scripts need ``text/javascript``
  whatever the host's ``mimetypes`` table says).

Every response carries a strict Content-Security-Policy (scripts, styles and connections to the
gateway's own origin only, no inline script, no framing) as defence in depth: the page already
renders every API string as text, never as markup.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import hdrs, web

__all__ = [
    "DASHBOARD_PREFIX",
    "SECURITY_HEADERS",
    "STATIC_DIR",
    "dashboard_routes",
    "setup_dashboard",
    "static_files",
]

DASHBOARD_PREFIX = "/gateway"
STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def static_files(root: Path = STATIC_DIR) -> dict[str, Path]:
    """Return the servable files under ``root``, keyed by their POSIX path relative to it."""
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in CONTENT_TYPES and not path.name.startswith("."):
            files[path.relative_to(root).as_posix()] = path
    return files


def _file_response(request: web.Request, path: Path) -> web.Response:
    """Return one shipped file with its content type, an ETag and the security headers.

    ``Cache-Control: no-cache`` makes the browser revalidate every time, so an upgraded gateway
    serves its new page at once; an unchanged file costs a ``304`` without a body.
    """
    body = path.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = dict(SECURITY_HEADERS)
    headers[hdrs.CACHE_CONTROL] = "no-cache"
    headers[hdrs.ETAG] = etag
    if etag in request.headers.get(hdrs.IF_NONE_MATCH, ""):
        return web.Response(status=304, headers=headers)
    headers[hdrs.CONTENT_TYPE] = CONTENT_TYPES[path.suffix]
    return web.Response(body=body, headers=headers)


def dashboard_routes(root: Path = STATIC_DIR) -> list[web.RouteDef]:
    """Return the dashboard's route definitions (add them before the catch-all proxy route).

    ``root`` is the directory of static files (the package's own by default; tests may pass
    another). The page itself is ``index.html`` in that directory.
    """
    files = static_files(root)
    index = root / "index.html"

    async def redirect(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect(f"{DASHBOARD_PREFIX}/")

    async def page(request: web.Request) -> web.StreamResponse:
        return _file_response(request, index)

    async def asset(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound(text="no such dashboard file")
        return _file_response(request, path)

    return [
        web.get(DASHBOARD_PREFIX, redirect, name="dashboard-redirect"),
        web.get(f"{DASHBOARD_PREFIX}/", page, name="dashboard"),
        web.get(f"{DASHBOARD_PREFIX}/index.html", page, name="dashboard-index"),
        web.get(f"{DASHBOARD_PREFIX}/static/{{path:.+}}", asset, name="dashboard-static"),
    ]


def setup_dashboard(app: web.Application, root: Path = STATIC_DIR) -> None:
    """Add the dashboard routes to ``app`` (call it before the catch-all proxy route)."""
    app.router.add_routes(dashboard_routes(root))
