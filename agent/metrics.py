"""Fleet metrics as Prometheus text: a node_exporter textfile and/or a tiny local endpoint.

The daemon fills a :class:`MetricsSnapshot` from its journal and sessions (the same numbers
``scan-agent status`` shows); :func:`render_prometheus` turns it into the text exposition
format 0.0.4. Every series carries ``station`` and ``site`` labels so several docks on one Pi,
or a fleet behind one Prometheus, stay apart.

>>> snap = MetricsSnapshot(station="dock-3", site="WH1", pending=4, start_time=1.7e9)
>>> print(render_prometheus(snap).splitlines()[2])
scan_agent_up{site="WH1",station="dock-3"} 1

Exported series (all prefixed ``scan_agent_``): ``up``, ``start_time_seconds``,
``scans_total{outcome}``, ``movements_total{type}``, ``pending_events``, ``rejected_events``,
``oldest_pending_age_seconds``, ``last_sync_success_timestamp_seconds``,
``clock_offset_seconds``, ``clock_basis{basis}``, ``scanner_connected{scanner}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.errors import AgentError

__all__ = [
    "CONTENT_TYPE",
    "MetricsServer",
    "MetricsSnapshot",
    "parse_listen",
    "render_prometheus",
    "serve_metrics",
    "textfile_task",
    "write_textfile",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "scan_agent_"
_MAX_REQUEST_HEAD = 8192
_CLIENT_TIMEOUT = 5.0


@dataclass(frozen=True)
class MetricsSnapshot:
    """The numbers one station exports at one moment. Times are Unix seconds.

    ``scans_total`` counts scans by outcome (e.g. ``accepted``, ``rejected``, ``command``);
    ``movements_total`` counts movements by type (``receipt``, ``pick``, ...). ``pending`` is the
    number of events not yet acknowledged by the ledger, ``rejected`` the quarantined ones.
    ``None`` means unknown or never: ``last_sync_success_timestamp`` None is exported as 0,
    ``clock_offset_seconds`` None is left out.
    """

    station: str
    site: str
    scans_total: Mapping[str, int] = field(default_factory=dict)
    movements_total: Mapping[str, int] = field(default_factory=dict)
    pending: int = 0
    rejected: int = 0
    oldest_pending_age_seconds: float | None = None
    last_sync_success_timestamp: float | None = None
    clock_offset_seconds: float | None = None
    clock_basis: str | None = None
    scanner_connected: Mapping[str, bool] = field(default_factory=dict)
    start_time: float = 0.0


_Kind = Literal["counter", "gauge"]
_Sample = tuple[Mapping[str, str], float]


def render_prometheus(snapshot: MetricsSnapshot) -> str:
    """The snapshot in Prometheus text exposition format 0.0.4 (ends with a newline)."""
    s = snapshot
    base = {"station": s.station, "site": s.site}
    out: list[str] = []

    def family(name: str, kind: _Kind, help_text: str, samples: Iterable[_Sample]) -> None:
        full = _PREFIX + name
        out.append(f"# HELP {full} {_escape_help(help_text)}")
        out.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            out.append(f"{full}{_labels({**base, **labels})} {_value(value)}")

    family("up", "gauge", "1 while the scan agent runs.", [({}, 1)])
    family("start_time_seconds", "gauge", "When the agent started, in Unix seconds.",
           [({}, s.start_time)])
    family("scans_total", "counter", "Scans read, by outcome.",
           [({"outcome": k}, v) for k, v in sorted(s.scans_total.items())])
    family("movements_total", "counter", "Movements committed to the journal, by type.",
           [({"type": k}, v) for k, v in sorted(s.movements_total.items())])
    family("pending_events", "gauge", "Events in the journal not yet accepted by the ledger.",
           [({}, s.pending)])
    family("rejected_events", "gauge", "Events the ledger rejected (quarantined, kept).",
           [({}, s.rejected)])
    family("oldest_pending_age_seconds", "gauge",
           "Age of the oldest unsynced event (0 when none).",
           [({}, s.oldest_pending_age_seconds or 0.0)])
    family("last_sync_success_timestamp_seconds", "gauge",
           "Last successful sync, Unix time (0 = never).",
           [({}, s.last_sync_success_timestamp or 0.0)])
    family("clock_offset_seconds", "gauge",
           "Ledger time minus local time (absent until known).",
           [] if s.clock_offset_seconds is None else [({}, s.clock_offset_seconds)])
    family("clock_basis", "gauge", "What the event times are based on (1 for the current basis).",
           [] if s.clock_basis is None else [({"basis": s.clock_basis}, 1)])
    family("scanner_connected", "gauge", "1 when the scanner is open, 0 while it is missing.",
           [({"scanner": k}, 1 if v else 0) for k, v in sorted(s.scanner_connected.items())])
    return "\n".join(out) + "\n"


def _labels(labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def write_textfile(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` atomically, for node_exporter's textfile collector.

    The text goes to a hidden temporary file in the same directory (not ending in ``.prom``,
    so the collector never reads it half-written), which is then renamed over ``path``.
    The file is made world-readable: node_exporter runs as another user, and metrics are not
    secret. There is no fsync: the file is rewritten every few seconds and losing the last one
    in a power cut costs nothing, while syncing wears the SD card.
    Raises :class:`~agent.errors.AgentError` when the directory is not writable.
    """
    target = Path(path)
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp_name, target)
        tmp_name = None
    except OSError as exc:
        raise AgentError(
            f"cannot write metrics textfile {target}: {exc.strerror or exc}") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


async def textfile_task(
    path: str | os.PathLike[str],
    interval: float,
    get_snapshot: Callable[[], MetricsSnapshot],
    stop: asyncio.Event,
) -> None:
    """Rewrite the textfile every ``interval`` seconds until ``stop`` is set, then once more.

    The file write runs in a thread so a slow SD card never blocks the event loop. Write errors
    are logged (once per distinct message) and retried on the next round; they never end the task.
    """
    last_error: str | None = None
    while True:
        try:
            text = render_prometheus(get_snapshot())
            await asyncio.to_thread(write_textfile, path, text)
            last_error = None
        except AgentError as exc:
            if str(exc) != last_error:
                log.warning("%s", exc)
                last_error = str(exc)
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9105"`` → ``("127.0.0.1", 9105)``; ``"[::1]:9105"`` works too."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


class MetricsServer:
    """A running metrics endpoint (see :func:`serve_metrics`); close it when done."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with port 0)."""
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every (host, port) the endpoint listens on."""
        return [(str(s.getsockname()[0]), int(s.getsockname()[1]))
                for s in self._server.sockets]

    def close(self) -> None:
        """Stop accepting connections (idempotent)."""
        self._server.close()

    async def wait_closed(self) -> None:
        """Wait until the listening sockets are closed."""
        await self._server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


async def serve_metrics(
    host: str, port: int, get_snapshot: Callable[[], MetricsSnapshot]
) -> MetricsServer:
    """Serve ``GET /metrics`` on ``host:port`` from the running event loop.

    A deliberately small HTTP/1.1 server: one request per connection (``Connection: close``),
    request heads over 8 KiB are refused (431), clients get 5 seconds, other paths get 404 and
    other methods 405. ``get_snapshot`` is called on the loop for each scrape and must be quick
    (read counters the daemon keeps, no database query). Raises :class:`AgentError` when the
    address cannot be bound.

    >>> server = await serve_metrics("127.0.0.1", 9105, daemon.metrics_snapshot)  # doctest: +SKIP
    >>> server.close()                                                          # doctest: +SKIP
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_CLIENT_TIMEOUT):
                await _answer(reader, writer, get_snapshot)
        except (TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("metrics endpoint: request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(handle, host, port, limit=_MAX_REQUEST_HEAD)
    except OSError as exc:
        raise AgentError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    return MetricsServer(server)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  get_snapshot: Callable[[], MetricsSnapshot]) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        await _respond(writer, 431, "Request Header Fields Too Large", b"request too large\n")
        return
    except asyncio.IncompleteReadError:
        return  # the client went away before finishing its request
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        await _respond(writer, 400, "Bad Request", b"bad request\n")
        return
    method, target, _version = parts
    path = target.split("?", 1)[0]
    if path != "/metrics":
        await _respond(writer, 404, "Not Found", b"not found; try /metrics\n")
        return
    if method not in ("GET", "HEAD"):
        await _respond(writer, 405, "Method Not Allowed", b"method not allowed\n",
                       extra=[("Allow", "GET, HEAD")])
        return
    body = render_prometheus(get_snapshot()).encode("utf-8")
    await _respond(writer, 200, "OK", body, content_type=CONTENT_TYPE,
                   head_only=method == "HEAD")


async def _respond(writer: asyncio.StreamWriter, code: int, reason: str, body: bytes, *,
                   content_type: str = "text/plain; charset=utf-8",
                   extra: Iterable[tuple[str, str]] = (), head_only: bool = False) -> None:
    headers = [
        f"HTTP/1.1 {code} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in extra),
    ]
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()
