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
from datetime import UTC, tzinfo
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ledger.connectors.page import render_connectors
from ledger.dashboard import (
    Overview,
    PageContext,
    render_error,
    render_filters,
    render_incident,
    render_main,
    render_page,
)
from ledger.errors import FilterError, StoreError
from ledger.events import format_time, now_us
from ledger.export import to_csv
from ledger.filters import IncidentFilter
from ledger.service import DEFAULT_INCIDENTS, LedgerService, Reply

__all__ = ["create_app"]

log = logging.getLogger("ledger.http")

MAX_PAGE = 10_000  # the largest page of GET /v1/events and /v1/negatives (DESIGN section 6)


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

    def page_limit(raw: str) -> int | None:
        limit = _whole_number(raw)
        return limit if limit is not None and 1 <= limit <= MAX_PAGE else None

    def bad_limit(raw: str) -> JSONResponse:
        return JSONResponse({"error": f"limit: expected 1 to {MAX_PAGE}, got {raw!r}"},
                            status_code=400)

    async def negatives(request: Request) -> Response:
        q = request.query_params
        raw = q.get("limit", str(DEFAULT_INCIDENTS))
        limit = page_limit(raw)
        if limit is None:
            return bad_limit(raw)
        query = {k: v for k, v in q.items() if k not in ("limit", "after")}
        return await read(request, service.negatives, None, query, limit, q.get("after"))

    def negatives_csv_body(query: dict[str, str]) -> Reply | str:
        try:
            filt = service.filter_of(query)
        except FilterError as exc:
            return Reply(400, {"error": str(exc)})
        return to_csv(service.filtered_json(filt))

    async def negatives_csv(request: Request) -> Response:
        if not read_allowed(request):
            return denied()
        try:
            out = await service.call(negatives_csv_body, dict(request.query_params))
        except StoreError as exc:
            return await unavailable(exc)
        if isinstance(out, Reply):
            return _json(out)
        # The byte order mark tells a spreadsheet the file is UTF-8 (item names).
        return Response("\ufeff" + out, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="negatives.csv"',
                                 "Cache-Control": "no-store"})

    async def incident_json(request: Request) -> Response:
        return await read(request, service.incident, request.path_params["id"])

    async def add_note(request: Request) -> Response:
        too_large = JSONResponse({"error": "a note's body is at most 64 KiB"}, status_code=413)
        declared = _whole_number(request.headers.get("content-length", "0"))
        if declared is None or declared > 65536:
            return too_large
        chunks, size = [], 0
        try:
            async with asyncio.timeout(config.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > 65536:
                        return too_large
                    chunks.append(chunk)
        except (TimeoutError, ClientDisconnect):
            return JSONResponse({"error": "request body not complete"}, status_code=408,
                                headers={"Connection": "close"})
        body = b"".join(chunks)
        try:
            return _json(await service.call(service.add_note, _bearer(request),
                                            request.path_params["id"], body))
        except StoreError as exc:
            return await unavailable(exc)

    async def balances(request: Request) -> Response:
        q = request.query_params
        return await read(request, service.balances, q.get("site"), q.get("item"),
                          q.get("location"), q.get("by"))

    async def events(request: Request) -> Response:
        q = request.query_params
        raw = q.get("limit", "100")
        limit = page_limit(raw)
        if limit is None:
            return bad_limit(raw)
        return await read(request, service.events, q.get("station"), limit, q.get("after"))

    async def held(request: Request) -> Response:
        return await read(request, service.held)

    async def stations(request: Request) -> Response:
        return await read(request, service.stations)

    async def connectors(request: Request) -> Response:
        return await read(request, service.connectors)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "server_time": format_time(now_us())})

    def context(query: dict[str, str]) -> tuple[PageContext, list[str], list[str]]:
        """The page's filter (raises FilterError), zones and kept parameters, with the
        known sites and stations for the filter form."""
        filt = service.filter_of(query)
        stations = service.store.stations()
        sites = sorted({s.site for s in stations} | set(config.sites))
        keep = tuple((k, query[k]) for k in ("refresh", "token") if query.get(k))
        page_zone: tzinfo = UTC
        if filt.site is not None:
            page_zone = config.zone(filt.site)
        else:
            zones = {config.zone(s) for s in sites}
            if len(zones) == 1:
                page_zone = zones.pop()
        ctx = PageContext(filt, config.zone, now_us(), keep, page_zone)
        return ctx, sites, [s.name for s in stations]

    def overview_and_connectors(query: dict[str, str]
                                ) -> tuple[PageContext, Overview, list[dict[str, Any]]]:
        ctx, o = overview(query)
        return ctx, o, service.connectors().body["connectors"]

    def overview(query: dict[str, str]) -> tuple[PageContext, Overview]:
        ctx, sites, station_names = context(query)
        filt = ctx.filt
        incidents = service.filtered_json(filt)
        chart_filter = filt.opened_per_day()
        recent = incidents if chart_filter == filt else service.filtered_json(chart_filter)
        held_events = [h for h in service.held().body["held"]
                       if filt.site in (None, h.get("site"))
                       and filt.station in (None, h.get("station"))]
        station_rows = [s for s in service.stations().body["stations"]
                        if filt.site in (None, s["site"]) and filt.station in (None, s["name"])]
        resolvers = service.event_summaries(
            [i["resolved_by_event_id"] for i in incidents[-50:] if i["resolved_by_event_id"]])
        names = service.item_names([str(h.get("item")) for h in held_events])
        return ctx, Overview(incidents, recent, held_events, station_rows, names, resolvers,
                             sites, station_names)

    def refresh_of(request: Request) -> int:
        wanted = _whole_number(request.query_params.get("refresh", "5"))
        return 5 if wanted is None else max(1, min(3600, wanted))

    def page_denied() -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>scan-ledger</title>"
                            "<p>This dashboard needs the read token: add ?token=...</p>",
                            status_code=401)

    def bad_filter(request: Request, exc: FilterError) -> Response:
        keep = [(k, v) for k, v in request.query_params.items() if k in ("refresh", "token")]
        back = PageContext(IncidentFilter(), config.zone, 0, tuple(keep)).link("/")
        return HTMLResponse(render_error(str(exc), back), status_code=400)

    async def dashboard(request: Request) -> Response:
        if not read_allowed(request):
            return page_denied()
        query = dict(request.query_params)
        try:
            ctx, o, connectors = await service.call(overview_and_connectors, query)
        except FilterError as exc:
            return bad_filter(request, exc)
        except StoreError as exc:
            return HTMLResponse(f"<p>ledger storage unavailable: {exc}</p>", status_code=503)
        main = render_main(o, ctx) + render_connectors(connectors)
        headers = {"Cache-Control": "no-store"}
        if request.headers.get("x-ledger-fragment") == "1":
            return HTMLResponse(main, headers=headers)
        return HTMLResponse(render_page(main, refresh_of(request), above=render_filters(o, ctx)),
                            headers=headers)

    def incident_story(query: dict[str, str], incident_id: int) -> tuple[PageContext, Reply]:
        ctx, _sites, _stations = context(query)
        return ctx, service.incident(incident_id)

    async def incident_page(request: Request) -> Response:
        if not read_allowed(request):
            return page_denied()
        incident_id = request.path_params["id"]
        try:
            ctx, reply = await service.call(incident_story, dict(request.query_params),
                                            incident_id)
        except FilterError as exc:
            return bad_filter(request, exc)
        except StoreError as exc:
            return HTMLResponse(f"<p>ledger storage unavailable: {exc}</p>", status_code=503)
        if reply.status != 200:
            return HTMLResponse(render_error(str(reply.body.get("error")), ctx.link("/")),
                                status_code=reply.status)
        main = render_incident(reply.body, ctx)
        headers = {"Cache-Control": "no-store"}
        if request.headers.get("x-ledger-fragment") == "1":
            return HTMLResponse(main, headers=headers)
        return HTMLResponse(render_page(main, refresh_of(request),
                                        title=f"incident {incident_id}",
                                        subtitle="one incident explained"), headers=headers)

    routes = [
        Route("/", dashboard, methods=["GET"]),
        Route("/v1/events", post_events, methods=["POST"]),
        Route("/v1/events", events, methods=["GET"]),
        Route("/incidents/{id:int}", incident_page, methods=["GET"]),
        Route("/v1/negatives", negatives, methods=["GET"]),
        Route("/v1/negatives.csv", negatives_csv, methods=["GET"]),
        Route("/v1/negatives/{id:int}", incident_json, methods=["GET"]),
        Route("/v1/negatives/{id:int}/notes", add_note, methods=["POST"]),
        Route("/v1/balances", balances, methods=["GET"]),
        Route("/v1/held", held, methods=["GET"]),
        Route("/v1/stations", stations, methods=["GET"]),
        Route("/v1/connectors", connectors, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes)
