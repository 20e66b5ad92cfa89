"""Admin API routes that change the running distributor (see docs/admin-openapi.yaml).

Every change applies without losing a message: a removed or drained analyzer finishes (or reroutes) what it
holds, weight changes swap in a new route table, pausing ingest stops reading from emitters (they see TCP
backpressure).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from logdist.config import AnalyzerConfig, Config, ConfigError

if TYPE_CHECKING:
    from logdist.control.reload import ConfigReloader
    from logdist.distributor import Distributor

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def error(status: int, message: str) -> web.Response:
    """A JSON error body ``{"error": message}``."""
    return web.json_response({"error": message}, status=status)


def token_middleware(token: str | None) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Require ``Authorization: Bearer TOKEN`` on every path but health and metrics, when a token is set."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None or request.path in OPEN_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization", "")
        if not given.startswith("Bearer "):
            return error(401, "missing bearer token (Authorization: Bearer TOKEN)")
        if not hmac.compare_digest(given[7:].encode(), token.encode()):
            return error(403, "invalid token")
        return await handler(request)

    return check


class _NewAnalyzer(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    address: str
    weight: float = 1.0
    kind: str = "native"
    content_encoding: str | None = None
    group: str = "default"


class _Weight(msgspec.Struct, forbid_unknown_fields=True):
    weight: float


async def _body(request: web.Request, kind: type[msgspec.Struct]) -> msgspec.Struct:
    try:
        return msgspec.json.decode(await request.read(), type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _json_http(web.HTTPBadRequest, str(exc)) from None


def _json_http(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(text=msgspec.json.encode({"error": message}).decode(), content_type="application/json")


def add_routes(app: web.Application, distributor: Distributor, reloader: ConfigReloader | None) -> None:
    """Register the mutating endpoints on ``app``."""

    def link_or_404(request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in distributor.links:
            raise _json_http(web.HTTPNotFound, f"no analyzer named {name!r}")
        return name

    def analyzer_view(name: str) -> dict[str, object]:
        return next(a for a in distributor.stats()["analyzers"] if a["name"] == name)

    async def list_analyzers(request: web.Request) -> web.Response:
        return web.json_response(distributor.stats()["analyzers"])

    async def add_analyzer(request: web.Request) -> web.Response:
        new = await _body(request, _NewAnalyzer)
        spec = AnalyzerConfig(**msgspec.structs.asdict(new))
        try:
            Config(analyzers=[spec], groups=distributor.config.groups).validate()
        except ConfigError as exc:
            return error(400, str(exc).replace("analyzers[0].", ""))
        if spec.name in distributor.links:
            return error(409, f"analyzer {spec.name!r} already exists")
        distributor.add_analyzer(spec)
        return web.json_response(analyzer_view(spec.name), status=201)

    async def remove_analyzer(request: web.Request) -> web.Response:
        name = link_or_404(request)
        drain = request.query.get("drain", "true").lower() not in ("0", "false", "no")
        rerouted = await distributor.remove_analyzer(name, drain=drain)
        return web.json_response({"removed": name, "rerouted": rerouted})

    async def set_weight(request: web.Request) -> web.Response:
        name = link_or_404(request)
        body = await _body(request, _Weight)
        try:
            distributor.set_weight(name, body.weight)  # type: ignore[attr-defined]
        except ValueError as exc:
            return error(400, str(exc))
        return web.json_response(analyzer_view(name))

    async def drain(request: web.Request) -> web.Response:
        name = link_or_404(request)
        distributor.drain_analyzer(name)
        return web.json_response(analyzer_view(name))

    async def restore(request: web.Request) -> web.Response:
        name = link_or_404(request)
        distributor.restore_analyzer(name)
        return web.json_response(analyzer_view(name))

    async def pause(request: web.Request) -> web.Response:
        distributor.pause_ingest()
        return web.json_response({"paused": distributor.paused})

    async def resume(request: web.Request) -> web.Response:
        distributor.resume_ingest()
        return web.json_response({"paused": distributor.paused})

    async def reload(request: web.Request) -> web.Response:
        if reloader is None:
            return error(409, "no configuration file: start with --config FILE to reload")
        status = await reloader.reload()
        return web.json_response(reloader.status(), status=200 if status.ok else 400)

    async def openapi(request: web.Request) -> web.FileResponse:
        from pathlib import Path

        return web.FileResponse(Path(__file__).with_name("openapi.yaml"))

    app.router.add_get("/v1/analyzers", list_analyzers)
    app.router.add_post("/v1/analyzers", add_analyzer)
    app.router.add_delete("/v1/analyzers/{name}", remove_analyzer)
    app.router.add_put("/v1/analyzers/{name}/weight", set_weight)
    app.router.add_post("/v1/analyzers/{name}/drain", drain)
    app.router.add_post("/v1/analyzers/{name}/restore", restore)
    app.router.add_post("/v1/ingest/pause", pause)
    app.router.add_post("/v1/ingest/resume", resume)
    app.router.add_post("/v1/config/reload", reload)
    app.router.add_get("/openapi.yaml", openapi)
