"""A fault-injecting HTTP proxy on 127.0.0.1, between a station and its ledger.

The demo uses it to cut a dock's network mid-shift; the tests use it to make the ledger
misbehave on purpose: down, 5xx at a rate, the connection reset after the ledger committed
but before the station heard the answer, slow answers, ``429`` with ``Retry-After``,
truncated answers. It speaks just enough HTTP/1.1 (Content-Length bodies, keep-alive) for
the station's sync and forwards to the real ledger with httpx.

>>> async with FaultProxy("http://127.0.0.1:8080") as proxy:   # doctest: +SKIP
...     proxy.faults.down = True
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

import httpx

__all__ = ["FaultProxy", "Faults"]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


@dataclass
class Faults:
    """What the proxy does to the next requests. Change the fields at any time."""

    down: bool = False  # every connection is dropped at once (network cut)
    error_rate: float = 0.0  # answer 503-less 5xx (500/502) without forwarding
    reset_after_commit_rate: float = 0.0  # forward, then drop the answer (reset)
    truncate_rate: float = 0.0  # forward, then send half of the answer and close
    delay: float = 0.0  # seconds to wait before answering (after forwarding)
    delay_method: str | None = None  # ``delay`` only for this method (GET: reads only)
    drop_rate: float = 0.0  # drop the connection without forwarding
    status: int | None = None  # answer this status without forwarding ...
    status_count: int = 0  # ... for this many requests
    retry_after: str | None = None  # Retry-After header for ``status``
    status_method: str | None = None  # ``status`` only for this method (GET: reads only)
    body: bytes | None = None  # the body of a ``status`` answer (else an injected error)
    poison: str | None = None  # answer 400 to any request whose body contains this text
    seed: int | None = None


@dataclass
class Counts:
    requests: int = 0
    forwarded: int = 0
    injected: int = 0


@dataclass
class FaultProxy:
    """Proxy to ``upstream`` on 127.0.0.1 (``port=0``: a free port; see ``url``)."""

    upstream: str
    host: str = "127.0.0.1"
    port: int = 0
    faults: Faults = field(default_factory=Faults)
    counts: Counts = field(default_factory=Counts)
    _server: asyncio.Server | None = None
    _client: httpx.AsyncClient | None = None
    _rng: random.Random = field(default_factory=random.Random)
    _conns: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self.faults.seed is not None:
            self._rng.seed(self.faults.seed)
        self._client = httpx.AsyncClient(base_url=self.upstream, timeout=60)
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Drop every open connection now (and new ones while ``faults.down``)."""
        for w in list(self._conns):
            _abort(w)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.faults.down:
            _abort(writer)
            return
        self._conns.add(writer)
        try:
            while not self.faults.down:
                req = await _read_request(reader)
                if req is None:
                    break
                if not await self._answer(req, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:  # the proxy is closing: end this connection quietly
            pass
        finally:
            self._conns.discard(writer)
            _abort(writer)

    async def _answer(self, req: tuple[str, str, dict[str, str], bytes],
                      writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must end."""
        method, path, headers, body = req
        f = self.faults
        self.counts.requests += 1
        if f.down or self._roll(f.drop_rate):
            self.counts.injected += 1
            return False
        if (f.status is not None and f.status_count > 0
                and f.status_method in (None, method)):
            f.status_count -= 1
            self.counts.injected += 1
            extra = {"Retry-After": f.retry_after} if f.retry_after else {}
            writer.write(_response(f.status, f.body if f.body is not None
                                   else b'{"error": "injected"}', extra))
            await writer.drain()
            return True
        if f.poison is not None and f.poison.encode() in body:
            self.counts.injected += 1
            writer.write(_response(400, b'{"error": "invalid event in batch"}'))
            await writer.drain()
            return True
        if self._roll(f.error_rate):
            self.counts.injected += 1
            writer.write(_response(self._rng.choice((500, 502)), b'{"error": "injected"}'))
            await writer.drain()
            return True
        assert self._client is not None
        fwd = {k: v for k, v in headers.items() if k in ("authorization", "content-type")}
        try:
            resp = await self._client.request(method, path, content=body, headers=fwd)
        except httpx.HTTPError:
            writer.write(_response(502, b'{"error": "upstream unreachable"}'))
            await writer.drain()
            return True
        self.counts.forwarded += 1
        if f.delay > 0 and f.delay_method in (None, method):
            await asyncio.sleep(f.delay)
        if self._roll(f.reset_after_commit_rate):
            self.counts.injected += 1
            return False
        keep = {k: v for k, v in resp.headers.items() if k.lower() in ("retry-after",)}
        data = _response(resp.status_code, resp.content, keep, resp.headers.get("content-type"))
        if self._roll(f.truncate_rate):
            self.counts.injected += 1
            writer.write(data[: len(data) // 2])
            await writer.drain()
            return False
        writer.write(data)
        await writer.drain()
        return True


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError as exc:
        raise ValueError("request head too large") from exc
    if len(head) > _MAX_HEAD:
        raise ValueError("request head too large")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    if n < 0 or n > _MAX_BODY:
        raise ValueError("bad content-length")
    body = await reader.readexactly(n) if n else b""
    return method, path, headers, body


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 413: "Content Too Large", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _response(status: int, body: bytes, extra: dict[str, str] | None = None,
              content_type: str | None = "application/json") -> bytes:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            f"Content-Length: {len(body)}"]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    for k, v in (extra or {}).items():
        head.append(f"{k}: {v}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
