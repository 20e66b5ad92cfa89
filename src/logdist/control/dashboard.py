"""The operator's dashboard: one self-contained page on the admin port (``GET /dashboard``; ``GET /`` redirects).

The page holds no data: its JavaScript polls ``/stats`` every second and calls the admin API (weight, drain,
restore, pause, resume) with ``Authorization: Bearer TOKEN`` taken from the URL fragment
(``/dashboard#token=TOKEN``), which browsers never send to the server. The page itself is therefore served
without a token, even when the admin API requires one; everything it fetches still does.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _csp(html: str) -> str:
    """A Content-Security-Policy that allows exactly the page's inline script and style, and fetches to itself."""

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def add_dashboard_routes(app: web.Application) -> None:
    """Serve the dashboard at ``GET /dashboard`` and redirect ``GET /`` to it (unless ``/`` is taken).

    Call after the admin token middleware is installed: a middleware put first lets these two routes through
    without a token (the page is static; the API calls it makes are checked as usual).
    """
    html = resources.files("logdist.control").joinpath("dashboard.html").read_text(encoding="utf-8")
    headers = {
        "Content-Security-Policy": _csp(html),
        "Cache-Control": "no-cache",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html", charset="utf-8", headers=headers)

    async def root(request: web.Request) -> web.Response:
        # relative, so it also works under a proxy prefix; browsers keep the #fragment (the token) across it
        raise web.HTTPFound("dashboard")

    open_handlers: set[Handler] = {dashboard}
    app.router.add_get("/dashboard", dashboard)
    if not any(resource.canonical == "/" for resource in app.router.resources()):
        app.router.add_get("/", root)
        open_handlers.add(root)

    @web.middleware
    async def open_page(request: web.Request, handler: Handler) -> web.StreamResponse:
        route_handler = request.match_info.route.handler
        if route_handler in open_handlers:
            return await route_handler(request)
        return await handler(request)

    app.middlewares.insert(0, open_page)
