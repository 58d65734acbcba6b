"""Webhook alerts: a JSON POST when an incident opens, changes class, resolves or reopens.

Delivery happens on a background thread with retries and capped exponential backoff (full
jitter); failures are logged and never reach ingest, which only puts a payload in a bounded
queue. The payload::

    {"kind": "opened" | "class_changed" | "resolved" | "reopened",
     "previous_class": "location" | null, "incident": {...DESIGN section 8...},
     "sent_at": "2026-11-22T10:15:31.000000Z"}
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
from typing import Any

import httpx

from ledger.events import format_time, now_us

__all__ = ["WebhookNotifier"]

log = logging.getLogger("ledger.alerts")


class WebhookNotifier:
    """Posts alert payloads to one URL, in order, from a background thread.

    >>> n = WebhookNotifier("http://127.0.0.1:9/alerts", max_attempts=1)  # doctest: +SKIP
    >>> n.notify({"kind": "opened", "incident": {}}); n.close()           # doctest: +SKIP
    """

    def __init__(self, url: str, *, timeout: float = 5.0, max_attempts: int = 8,
                 base_delay: float = 0.5, max_delay: float = 60.0,
                 max_queue: int = 10_000, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(max_queue)
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._thread = threading.Thread(target=self._run, name="ledger-webhook", daemon=True)
        self._thread.start()
        self._closed = False

    def notify(self, payload: dict[str, Any]) -> None:
        """Queue one alert; never blocks (a full queue drops the alert with a log line)."""
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.failed += 1
            log.error("webhook queue full, alert dropped: %s", payload.get("kind"))

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the alerts already queued (waiting at most ``timeout`` s); idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(1.0)
        self._client.close()

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            self._deliver(payload)

    def _deliver(self, payload: dict[str, Any]) -> None:
        payload = {**payload, "sent_at": format_time(now_us())}
        for attempt in range(1, self.max_attempts + 1):
            if self._stop.is_set():
                break
            try:
                resp = self._client.post(self.url, json=payload)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 300:
                    self.delivered += 1
                    return
                problem = f"HTTP {resp.status_code}"
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                    log.error("webhook %s refused alert %s: %s", self.url, payload.get("kind"),
                              problem)
                    self.failed += 1
                    return
            log.warning("webhook %s attempt %d/%d failed: %s", self.url, attempt,
                        self.max_attempts, problem)
            if attempt < self.max_attempts:
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** attempt))
                if self._stop.wait(delay):
                    break
        self.failed += 1
        log.error("webhook %s: alert %s for incident %s given up", self.url,
                  payload.get("kind"), payload.get("incident", {}).get("id"))
