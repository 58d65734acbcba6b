"""The HTTP API (DESIGN section 6) and the dashboard, on Starlette.

A thin layer: it reads the request, enforces the size limit, and hands the work to
:class:`~ledger.service.LedgerService`, whose single worker thread does everything that
touches SQLite or the engine, so the event loop never blocks.

With several processes on one PostgreSQL database (DESIGN section 12) a batch for a site that
another process owns is forwarded to that process, whose answer goes back unchanged; reads of
incidents, balances and holds gather the other processes' sites from them (each answers for
its own sites when asked with ``X-Scan-Ledger-Local``).

Reads (``GET /v1/...`` and the dashboard ``/``) are open on the LAN by default, so the demo and
the dashboard work without setup; with ``read_token`` in the config they need
``Authorization: Bearer <read_token>`` (or ``?token=`` for a browser). A station's own token
also reads ``GET /v1/negatives`` for its own site (``site=`` required), which is how a dock
learns which of its warnings still stand; nothing else, and no other site.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, tzinfo
from typing import Any

import httpx
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
from ledger.filters import FILTER_KEYS, IncidentFilter
from ledger.service import DEFAULT_INCIDENTS, LedgerService, Reply, hash_token, merge_lists

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


FORWARDED = "x-scan-ledger-forwarded"  # a batch passed on by another process
LOCAL = "x-scan-ledger-local"  # a read asked by another process: this one's sites only
_PASSED_BACK = ("retry-after", "www-authenticate")


def _merge_key(name: str) -> Callable[[dict[str, Any]], Any]:
    """How a list read from several processes is put back in one order, and deduplicated."""
    if name == "incidents":
        return lambda i: (i["id"],)
    if name == "balances":
        return lambda b: (b["site"], b["item"], b["location"] or "")
    return lambda e: (e["occurred_at"], e["station"], e["seq"], e["event_id"])


def merge_connectors(local: list[dict[str, Any]],
                     remote: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each connector once, as told by the process that runs it (several processes on
    PostgreSQL: one runs each connector; the others only know its outbox's counts)."""
    out: dict[str, dict[str, Any]] = {}
    for c in local + remote:
        if c["name"] not in out or (c.get("running") and not out[c["name"]].get("running")):
            out[c["name"]] = c
    return list(out.values())


def create_app(service: LedgerService) -> Starlette:
    """The ASGI application over a started service."""
    config = service.config
    peers: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        peers["client"] = httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=2.0),
                                            limits=httpx.Limits(max_keepalive_connections=64))
        try:
            yield
        finally:
            await peers.pop("client").aclose()

    def client() -> httpx.AsyncClient:
        c = peers.get("client")
        if c is None:  # served without lifespan (never by our servers)
            c = peers["client"] = httpx.AsyncClient(timeout=30.0)
        return c

    async def forward(request: Request, reply: Reply, token: str | None, body: bytes,
                      received: int) -> Response:
        """Pass a batch to the process that owns its site; its answer goes back as is. If
        that process cannot be reached, it may have died: ask the service again (it takes
        the site over once the lease is free), a few times, then 503."""
        for attempt in range(1, 6):
            if reply.forward is None:
                return _ingest_json(reply)
            if request.headers.get(FORWARDED):
                break  # the sender believes this process owns the site: never a loop
            try:
                r = await client().post(
                    reply.forward.rstrip("/") + "/v1/events", content=body,
                    headers={"authorization": request.headers.get("authorization", ""),
                             "content-type": "application/json", FORWARDED: "1"})
            except httpx.TransportError as exc:
                log.info("owner %s unreachable (%s); asking again", reply.forward, exc)
                await asyncio.sleep(0.2 * attempt)
                reply = await service.call(service.ingest, token, body, received)
                continue
            headers = {k: v for k in _PASSED_BACK if (v := r.headers.get(k)) is not None}
            return Response(r.content, status_code=r.status_code, headers=headers,
                            media_type=r.headers.get("content-type", "application/json"))
        return JSONResponse({"error": "the site's owner cannot be reached; retry"},
                            status_code=503, headers={"Retry-After": "1"})

    async def gather(request: Request, name: str, local: Reply, path: str,
                     limit: int | None = None) -> Reply:
        """``local``'s list with the other processes' sites added (reads over every site):
        ``path`` is the same read asked of each of them; a paged list is cut to ``limit``
        again, with its ``next`` cursor."""
        if local.status != 200 or request.headers.get(LOCAL):
            return local
        urls = await service.call(service.peers)
        if not urls:
            return local
        headers = {LOCAL: "1"}
        if config.read_token is not None:  # the processes share one config
            headers["authorization"] = f"Bearer {config.read_token}"
        try:
            answers = await asyncio.gather(*(client().get(u.rstrip("/") + path,
                                                          headers=headers) for u in urls))
        except httpx.HTTPError as exc:
            return Reply(503, {"error": f"another ledger process did not answer: {exc}"},
                         {"Retry-After": "2"})
        bodies = [local.body]
        for r in answers:
            if r.status_code != 200:
                return Reply(503, {"error": f"another ledger process answered "
                                            f"{r.status_code}"}, {"Retry-After": "2"})
            bodies.append(r.json())
        return Reply(200, merge_lists(name, bodies, _merge_key(name), limit))

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
        token, body = _bearer(request), b"".join(chunks)
        # (read elsewhere only for a token known good: a stranger's body costs nothing there)
        read = await service.reader.read(body) if service.known_token(token) else None
        try:
            reply = await service.call(service.ingest, token, body, received, read)
            if reply.forward is not None:
                return await forward(request, reply, token, body, received)
        except StoreError as exc:
            return await unavailable(exc)
        return _ingest_json(reply)

    async def station_may_read(request: Request) -> JSONResponse | None:
        """None when the request's bearer is a station's token and its ``site`` parameter is
        that station's site; else the answer that refuses it (401, or 403 for a station
        asking about another site or none)."""
        token = _bearer(request)
        if token is None:
            return denied()
        station = await service.call(service.store.station_by_token, hash_token(token))
        if station is None:
            return denied()
        if request.query_params.get("site") != station.site:
            return JSONResponse({"error": f"a station's token reads only the incidents of "
                                          f"its own site: add site={station.site}"},
                                status_code=403)
        named = request.query_params.get("station")
        if named is not None and named != station.name:
            # (nor, through a filter's error, the names of other stations)
            return JSONResponse({"error": f"a station's token reads its site's incidents, or "
                                          f"its own: station={station.name}"},
                                status_code=403)
        return None

    async def read(request: Request, fn: Any, *args: Any, every_site: str = "",
                   limit: int | None = None, station_may: bool = False) -> Response:
        if not read_allowed(request):
            try:
                refused = await station_may_read(request) if station_may else denied()
            except StoreError as exc:
                return await unavailable(exc)
            if refused is not None:
                return refused
        try:
            reply = await service.call(fn, *args)
            if every_site:
                path = request.url.path + (f"?{request.url.query}" if request.url.query
                                           else "")
                reply = await gather(request, every_site, reply, path, limit)
            return _json(reply)
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
        return await read(request, service.negatives, None, query, limit, q.get("after"),
                          every_site="incidents", limit=limit, station_may=True)

    def peer_headers() -> dict[str, str]:
        headers = {LOCAL: "1"}
        if config.read_token is not None:  # the processes share one config
            headers["authorization"] = f"Bearer {config.read_token}"
        return headers

    async def peer_urls(request: Request) -> list[str]:
        """The other processes that own sites (several processes on PostgreSQL), unless
        this request is itself another process asking for this one's sites."""
        if request.headers.get(LOCAL):
            return []
        return await service.call(service.peers)

    async def peer_incidents(request: Request, query: dict[str, str]) -> list[dict[str, Any]]:
        """Every incident of the other processes' sites that passes ``query``'s filter."""
        params = {k: v for k, v in query.items() if k in FILTER_KEYS}
        out: list[dict[str, Any]] = []
        for url in await peer_urls(request):
            after: str | None = None
            while True:
                page = {**params, "limit": str(MAX_PAGE), **({"after": after} if after else {})}
                try:
                    r = await client().get(url.rstrip("/") + "/v1/negatives", params=page,
                                           headers=peer_headers())
                except httpx.HTTPError as exc:
                    raise StoreError(f"another ledger process did not answer: {exc}") from exc
                if r.status_code != 200:
                    raise StoreError(f"another ledger process answered {r.status_code}")
                body = r.json()
                out += body["incidents"]
                after = body["next"]
                if after is None:
                    break
        return out

    async def peer_list(request: Request, path: str, name: str) -> list[dict[str, Any]]:
        """List ``name`` of ``path`` as the other processes answer it (their sites)."""
        out: list[dict[str, Any]] = []
        for url in await peer_urls(request):
            try:
                r = await client().get(url.rstrip("/") + path, headers=peer_headers())
            except httpx.HTTPError as exc:
                raise StoreError(f"another ledger process did not answer: {exc}") from exc
            if r.status_code != 200:
                raise StoreError(f"another ledger process answered {r.status_code}")
            out += r.json()[name]
        return out

    def with_peers(local: list[dict[str, Any]],
                   others: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Incidents of this process and of the others, each once, in id order."""
        if not others:
            return local
        merged: list[dict[str, Any]] = merge_lists(
            "incidents", [{"incidents": local}, {"incidents": others}],
            _merge_key("incidents"))["incidents"]
        return merged

    def negatives_csv_body(query: dict[str, str],
                           others: list[dict[str, Any]]) -> Reply | str:
        try:
            filt = service.filter_of(query)
        except FilterError as exc:
            return Reply(400, {"error": str(exc)})
        return to_csv(with_peers(service.filtered_json(filt), others))

    async def negatives_csv(request: Request) -> Response:
        if not read_allowed(request):
            return denied()
        query = dict(request.query_params)
        try:
            await service.call(service.filter_of, query)
        except FilterError as exc:
            return _json(Reply(400, {"error": str(exc)}))
        try:
            others = await peer_incidents(request, query)
            out = await service.call(negatives_csv_body, query, others)
        except StoreError as exc:
            return await unavailable(exc)
        if isinstance(out, Reply):
            return _json(out)
        # The byte order mark tells a spreadsheet the file is UTF-8 (item names).
        return Response("\ufeff" + out, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="negatives.csv"',
                                 "Cache-Control": "no-store"})

    async def incident_reply(request: Request, incident_id: int) -> Reply:
        """One incident: from this process, or from the process that owns its site."""
        reply = await service.call(service.incident, incident_id)
        if reply.status != 404:
            return reply
        for url in await peer_urls(request):
            try:
                r = await client().get(url.rstrip("/") + f"/v1/negatives/{incident_id}",
                                       headers=peer_headers())
            except httpx.HTTPError as exc:
                raise StoreError(f"another ledger process did not answer: {exc}") from exc
            if r.status_code == 200:
                return Reply(200, r.json())
        return reply

    async def incident_json(request: Request) -> Response:
        if not read_allowed(request):
            return denied()
        try:
            return _json(await incident_reply(request, request.path_params["id"]))
        except StoreError as exc:
            return await unavailable(exc)

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
        incident_id = request.path_params["id"]
        try:
            reply = await service.call(service.add_note, _bearer(request), incident_id, body)
            if reply.status == 404:  # the incident may be another process's
                for url in await peer_urls(request):
                    try:
                        r = await client().post(
                            url.rstrip("/") + f"/v1/negatives/{incident_id}/notes",
                            content=body, headers={
                                LOCAL: "1", "content-type": "application/json",
                                "authorization": request.headers.get("authorization", "")})
                    except httpx.HTTPError as exc:
                        raise StoreError(
                            f"another ledger process did not answer: {exc}") from exc
                    if r.status_code != 404:
                        return Response(r.content, status_code=r.status_code,
                                        media_type="application/json")
            return _json(reply)
        except StoreError as exc:
            return await unavailable(exc)

    async def balances(request: Request) -> Response:
        q = request.query_params
        return await read(request, service.balances, q.get("site"), q.get("item"),
                          q.get("location"), q.get("by"), every_site="balances")

    async def events(request: Request) -> Response:
        q = request.query_params
        raw = q.get("limit", "100")
        limit = page_limit(raw)
        if limit is None:
            return bad_limit(raw)
        return await read(request, service.events, q.get("station"), limit, q.get("after"))

    async def held(request: Request) -> Response:
        return await read(request, service.held, every_site="held")

    async def stations(request: Request) -> Response:
        return await read(request, service.stations)

    async def connectors(request: Request) -> Response:
        if not read_allowed(request):
            return denied()
        try:
            local = (await service.call(service.connectors)).body["connectors"]
            remote = await peer_list(request, "/v1/connectors", "connectors")
        except StoreError as exc:
            return await unavailable(exc)
        return JSONResponse({"connectors": merge_connectors(local, remote)})

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

    async def overview_and_connectors(request: Request, query: dict[str, str]
                                      ) -> tuple[PageContext, Overview, list[dict[str, Any]]]:
        """The page's figures: this process's sites, and (several processes on PostgreSQL)
        those the others own, asked of them."""
        await service.call(service.filter_of, query)  # a bad filter: 400 before asking others
        others = await peer_incidents(request, query)
        chart_query = {k: v for k, v in query.items() if k not in ("status", "from", "to")}
        others_recent = (others if chart_query == query
                         else await peer_incidents(request, chart_query))
        others_held = await peer_list(request, "/v1/held", "held")
        ctx, o = await service.call(overview, query, others, others_recent, others_held)
        local = (await service.call(service.connectors)).body["connectors"]
        remote = await peer_list(request, "/v1/connectors", "connectors")
        return ctx, o, merge_connectors(local, remote)

    def overview(query: dict[str, str], others: list[dict[str, Any]],
                 others_recent: list[dict[str, Any]],
                 others_held: list[dict[str, Any]]) -> tuple[PageContext, Overview]:
        ctx, sites, station_names = context(query)
        filt = ctx.filt
        incidents = with_peers(service.filtered_json(filt), others)
        chart_filter = filt.opened_per_day()
        recent = (incidents if chart_filter == filt
                  else with_peers(service.filtered_json(chart_filter), others_recent))
        held_events = [h for h in service.held().body["held"] + others_held
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
            ctx, o, connectors = await overview_and_connectors(request, query)
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

    async def incident_story(request: Request, query: dict[str, str],
                             incident_id: int) -> tuple[PageContext, Reply]:
        ctx, _sites, _stations = await service.call(context, query)
        return ctx, await incident_reply(request, incident_id)

    async def incident_page(request: Request) -> Response:
        if not read_allowed(request):
            return page_denied()
        incident_id = request.path_params["id"]
        try:
            ctx, reply = await incident_story(request, dict(request.query_params),
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
    return Starlette(routes=routes, lifespan=lifespan)
