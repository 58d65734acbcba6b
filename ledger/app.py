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
``Authorization: Bearer <read_token>`` (or ``?token=`` for a browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ledger.dashboard import render_main, render_page
from ledger.errors import StoreError
from ledger.events import format_time, now_us
from ledger.service import DEFAULT_INCIDENTS, LedgerService, Reply, merge_lists

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
        try:
            reply = await service.call(service.ingest, token, body, received)
            if reply.forward is not None:
                return await forward(request, reply, token, body, received)
        except StoreError as exc:
            return await unavailable(exc)
        return _ingest_json(reply)

    async def read(request: Request, fn: Any, *args: Any, every_site: str = "",
                   limit: int | None = None) -> Response:
        if not read_allowed(request):
            return denied()
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
        return await read(request, service.negatives, q.get("status"), limit, q.get("after"),
                          every_site="incidents", limit=limit)

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

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "server_time": format_time(now_us())})

    async def every_site(request: Request, fn: Any, name: str, path: str, *args: Any,
                         limit: int | None = None) -> dict[str, Any]:
        r = await gather(request, name, await service.call(fn, *args), path, limit)
        if r.status != 200:
            raise StoreError(str(r.body.get("error")))
        return r.body

    async def dashboard_main(request: Request) -> str:
        incidents: list[dict[str, Any]] = []
        after = None
        while True:  # every page (DESIGN section 6)
            query = f"?limit={MAX_PAGE}" + (f"&after={after}" if after else "")
            page = await every_site(request, service.negatives, "incidents",
                                    "/v1/negatives" + query, None, MAX_PAGE, after,
                                    limit=MAX_PAGE)
            incidents += page["incidents"]
            after = page["next"]
            if after is None:
                break
        held_events = (await every_site(request, service.held, "held", "/v1/held"))["held"]
        station_rows = (await service.call(service.stations)).body["stations"]
        return render_main(incidents, held_events, station_rows, format_time(now_us()))

    async def dashboard(request: Request) -> Response:
        if not read_allowed(request):
            return HTMLResponse("<!doctype html><title>scan-ledger</title>"
                                "<p>This dashboard needs the read token: add ?token=...</p>",
                                status_code=401)
        wanted = _whole_number(request.query_params.get("refresh", "5"))
        refresh = 5 if wanted is None else max(1, min(3600, wanted))
        try:
            main = await dashboard_main(request)
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
        Route("/v1/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
