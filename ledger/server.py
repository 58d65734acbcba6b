"""Running the ledger: ``serve`` for the CLI, :class:`LedgerServer` for tests and the demo.

Both bind the listening socket themselves (so ``port=0`` gives a free port that is known
before the first request) and run the real uvicorn server.

>>> with LedgerServer("ledger.db") as srv:                  # doctest: +SKIP
...     token = srv.add_station("dock-3", "WH1")
...     httpx.post(srv.url + "/v1/events", headers={"Authorization": f"Bearer {token}"}, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ledger.app import create_app
from ledger.config import LedgerConfig, load_config
from ledger.errors import ServerError
from ledger.notify import notify_systemd
from ledger.service import LedgerService

__all__ = ["LedgerServer", "advertised", "bind", "serve", "tune_gc"]

log = logging.getLogger("ledger")


def tune_gc() -> None:
    """Collect garbage less often: the ledger allocates many small long-lived objects per
    event, and with the default thresholds the cyclic collector takes half the ingest time.
    Called by :func:`serve` (the process is the ledger's own), not by :class:`LedgerServer`."""
    gc.set_threshold(100_000, 50, 100)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every keep-alive response waits ~40 ms (Nagle + delayed
    # ACK). The listening socket's option is inherited as well, on Linux.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, telling us once it is really listening."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT start a graceful shutdown; afterwards the process exits 0 (uvicorn's
        own handler would re-raise the signal and make a clean stop look like a crash)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self.handle_exit)
               for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


class _HeadDeadline(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline for every request's head.

    uvicorn times nothing between a connection's opening and a complete request head, and
    every byte received restarts its keep-alive timer: a client that connects and says
    nothing, or sends its head a byte at a time, would hold a connection (and a file
    descriptor) for ever, and enough of them would lock the stations out. Here the head
    (request line and headers) must be complete within ``head_timeout_s`` of the
    connection's opening or of the previous response, else the connection is closed, with
    a 408 when part of a head had come. (A body has its own deadline in the application.)
    """

    head_timeout_s = 30.0  # set per server by _uvicorn_config
    _deadline: asyncio.TimerHandle | None = None
    _head_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_begun = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # idle: waiting for the next request
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.head_timeout_s, self._head_too_late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._head_begun:
            log.info("request head not complete after %g s: 408, connection closed",
                     self.head_timeout_s)
            body = (b'{"error":"request head not complete within %s s"}'
                    % f"{self.head_timeout_s:g}".encode())
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\n"
                                 b"content-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                 % (len(body), body))
        self.transport.close()


def _uvicorn_config(service: LedgerService, log_level: str) -> uvicorn.Config:
    protocol = type("HeadDeadline", (_HeadDeadline,),
                    {"head_timeout_s": service.config.head_timeout_s})
    return uvicorn.Config(create_app(service), http=protocol, lifespan="on",
                          log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
                          server_header=False)


def advertised(host: str, sock: socket.socket) -> str:
    """How other ledger processes reach this one: the listening URL, or, when listening on
    every address, this machine's name."""
    if host in ("0.0.0.0", "::", ""):
        return f"http://{socket.getfqdn()}:{sock.getsockname()[1]}"
    return _url(host, sock)


def serve(db: str | Path, *, host: str = "127.0.0.1", port: int = 8080,
          config: LedgerConfig | None = None, log_level: str = "warning",
          advertise: str | None = None) -> None:
    """Run the ledger in the foreground until SIGTERM or SIGINT.

    Once listening it prints exactly one line, ``scan-ledger listening on http://HOST:PORT``,
    to standard output, and tells systemd ``READY=1`` when run with ``Type=notify``
    (systemd/scan-ledger.service). Shutdown order: stop accepting, finish requests, stop
    alerts and the worker, close the database.
    """
    tune_gc()
    sock = bind(host, port)
    url = _url(host, sock)
    with LedgerService(db, config or LedgerConfig(),
                       advertise_url=advertise or advertised(host, sock)) as service:

        def announce() -> None:
            print(f"scan-ledger listening on {url}", flush=True)
            notify_systemd("READY=1", f"STATUS=listening on {url}")

        service.reader.warm()
        server = _Server(_uvicorn_config(service, log_level), announce)
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
            notify_systemd("STOPPING=1", "STATUS=requests finished; closing the database")


class LedgerServer:
    """The real ledger server on a background thread, as a context manager.

    ``url`` is the base URL; :meth:`add_station` returns a new station's token and
    :meth:`revoke_station` revokes it (refused at once). Exiting stops the server cleanly.
    """

    def __init__(self, db_path: str | Path, config_path: str | Path | None = None,
                 host: str = "127.0.0.1", port: int = 0, *,
                 config: LedgerConfig | None = None) -> None:
        self.db_path = db_path
        self.config = config if config is not None else load_config(config_path)
        self.host = host
        self.port = port
        self.url = ""
        self.service: LedgerService | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> LedgerServer:
        sock = bind(self.host, self.port)
        self.url = _url(self.host, sock)
        try:
            self.service = LedgerService(self.db_path, self.config,
                                         advertise_url=self.url).start()
        except BaseException:
            sock.close()
            raise
        started = threading.Event()
        self._server = _Server(_uvicorn_config(self.service, "warning"), started.set)

        def run() -> None:
            assert self._server is not None
            try:
                self._server.run(sockets=[sock])
            except BaseException as exc:  # reported by start()
                self._error = exc
            finally:
                sock.close()
                started.set()

        self._thread = threading.Thread(target=run, name="ledger-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not started.wait(0.05):
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError("the ledger server did not start within 30 s")
        if self._error is not None or not self._server.started:
            self.stop()
            raise ServerError(f"the ledger server failed to start: {self._error}")
        return self

    def stop(self) -> None:
        """Stop accepting, finish requests, then close the service; idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None
        if self.service is not None:
            self.service.close()
            self.service = None

    def __enter__(self) -> LedgerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _svc(self) -> LedgerService:
        if self.service is None:
            raise ServerError("the ledger server is not running")
        return self.service

    def add_station(self, name: str, site: str) -> str:
        """Register a station and return its token."""
        svc = self._svc()
        return svc.run(svc.add_station, name, site)

    def add_manager(self, name: str) -> str:
        """Register a manager and return its token (for notes)."""
        svc = self._svc()
        return svc.run(svc.add_manager, name)

    def import_items(self, names: list[tuple[str, str]]) -> tuple[int, int]:
        """Add or update item names; returns (added, updated)."""
        svc = self._svc()
        return svc.run(svc.import_items, names)

    def revoke_station(self, name: str) -> None:
        svc = self._svc()
        svc.run(svc.revoke_station, name)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a service method on the ledger's worker thread (for tests and the demo)."""
        return self._svc().run(fn, *args)
