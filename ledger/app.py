"""The HTTP API (DESIGN section 6) and the dashboard, on Starlette.

A thin layer: it reads the request, enforces the size limit, and hands the work to
:class:`~ledger.service.LedgerService`, whose single worker thread does everything that
touches SQLite or the engine, so the event loop never blocks.

Reads (``GET /v1/...`` and the dashboard ``/``) are open on the LAN by default, so the demo and
the dashboard work without setup; with ``read_token`` in the config they need
``Authorization: Bearer <read_token>`` (or ``?token=`` for a browser).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ledger.connectors.page import render_connectors
from ledger.dashboard import render_main, render_page
from ledger.errors import StoreError
from ledger.events import format_time, now_us
from ledger.service import LedgerService, Reply

__all__ = ["create_app"]

log = logging.getLogger("ledger.http")


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _whole_number(raw: str) -> int | None:
    """``raw`` as a non-negative int if it is ASCII digits of sane length, else None.

    ``str.isdigit`` alone also accepts ``"²"`` and strings too long for ``int()``; either would
    turn a bad query parameter into a 500."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 9:
        return int(raw)
    return None


def _json(reply: Reply) -> JSONResponse:
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


def _ingest_json(reply: Reply) -> Response:
    """An ingest answer (one result per event) written by orjson: the same JSON as
    :func:`_json`, several times faster for a large batch."""
    return Response(orjson.dumps(reply.body), status_code=reply.status, headers=reply.headers,
                    media_type="application/json")


def create_app(service: LedgerService) -> Starlette:
    """The ASGI application over a started service."""
    config = service.config

    def read_allowed(request: Request) -> bool:
        if config.read_token is None:
            return True
        given = _bearer(request) or request.query_params.get("token") or ""
        return hmac.compare_digest(given.encode(), config.read_token.encode())

    def denied() -> JSONResponse:
        return JSONResponse({"error": "reading needs the read token"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    async def unavailable(exc: StoreError) -> JSONResponse:
        return JSONResponse({"error": f"ledger storage unavailable: {exc}"}, status_code=503,
                            headers={"Retry-After": "5"})

    async def post_events(request: Request) -> Response:
        received = now_us()
        limit = config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return JSONResponse({"error": f"request body larger than {limit} bytes"},
                                status_code=413)
        chunks = []
        size = 0
        try:
            async with asyncio.timeout(config.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        return JSONResponse(
                            {"error": f"request body larger than {limit} bytes"},
                            status_code=413)
                    chunks.append(chunk)
        except TimeoutError:
            # A client that stalls mid-body would hold its connection for ever.
            log.info("request body not complete after %.0f s (%d bytes): 408",
                     config.body_timeout_s, size)
            return JSONResponse({"error": f"request body not complete within "
                                          f"{config.body_timeout_s:g} s"},
                                status_code=408, headers={"Connection": "close"})
        except ClientDisconnect:
            # The station went away mid-request (it will send the batch again): no answer.
            log.info("client went away while sending a batch (%d bytes read)", size)
            return Response(status_code=400)
        try:
            reply = await service.call(service.ingest, _bearer(request), b"".join(chunks),
                                       received)
        except StoreError as exc:
            return await unavailable(exc)
        return _ingest_json(reply)

    async def read(request: Request, fn: Any, *args: Any) -> Response:
        if not read_allowed(request):
            return denied()
        try:
            return _json(await service.call(fn, *args))
        except StoreError as exc:
            return await unavailable(exc)

    async def negatives(request: Request) -> Response:
        return await read(request, service.negatives, request.query_params.get("status"))

    async def balances(request: Request) -> Response:
        q = request.query_params
        return await read(request, service.balances, q.get("site"), q.get("item"),
                          q.get("location"), q.get("by"))

    async def events(request: Request) -> Response:
        q = request.query_params
        raw = q.get("limit", "100")
        limit = _whole_number(raw)
        if limit is None or not 1 <= limit <= 10_000:
            return JSONResponse({"error": f"limit: expected 1 to 10000, got {raw!r}"},
                                status_code=400)
        return await read(request, service.events, q.get("station"), limit)

    async def held(request: Request) -> Response:
        return await read(request, service.held)

    async def stations(request: Request) -> Response:
        return await read(request, service.stations)

    async def connectors(request: Request) -> Response:
        return await read(request, service.connectors)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "server_time": format_time(now_us())})

    def dashboard_main() -> str:
        incidents = service.negatives().body["incidents"]
        held_events = service.held().body["held"]
        station_rows = service.stations().body["stations"]
        return (render_main(incidents, held_events, station_rows, format_time(now_us()))
                + render_connectors(service.connectors().body["connectors"]))

    async def dashboard(request: Request) -> Response:
        if not read_allowed(request):
            return HTMLResponse("<!doctype html><title>scan-ledger</title>"
                                "<p>This dashboard needs the read token: add ?token=...</p>",
                                status_code=401)
        wanted = _whole_number(request.query_params.get("refresh", "5"))
        refresh = 5 if wanted is None else max(1, min(3600, wanted))
        try:
            main = await service.call(dashboard_main)
        except StoreError as exc:
            return HTMLResponse(f"<p>ledger storage unavailable: {exc}</p>", status_code=503)
        headers = {"Cache-Control": "no-store"}
        if request.headers.get("x-ledger-fragment") == "1":
            return HTMLResponse(main, headers=headers)
        return HTMLResponse(render_page(main, refresh), headers=headers)

    routes = [
        Route("/", dashboard, methods=["GET"]),
        Route("/v1/events", post_events, methods=["POST"]),
        Route("/v1/events", events, methods=["GET"]),
        Route("/v1/negatives", negatives, methods=["GET"]),
        Route("/v1/balances", balances, methods=["GET"]),
        Route("/v1/held", held, methods=["GET"]),
        Route("/v1/stations", stations, methods=["GET"]),
        Route("/v1/connectors", connectors, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes)
