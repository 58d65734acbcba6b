"""Reading a running ledger's paged lists over HTTP (DESIGN section 6), for the command line.

``GET /v1/events`` and ``GET /v1/negatives`` answer ``limit`` items at a time with ``next``,
the opaque cursor of the following page (``null`` on the last); :func:`read_all` follows it,
so a client reads everything however long the history, one page in memory at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from ledger.errors import LedgerError

__all__ = ["read_all"]


def read_all(url: str, path: str, key: str, params: dict[str, str] | None = None, *,
             token: str | None = None, page: int = 1000,
             timeout: float = 30.0) -> Iterator[dict[str, Any]]:
    """Every item of the list ``key`` at ``url + path``, page after page.

    Raises :class:`~ledger.errors.LedgerError` naming the URL when the ledger cannot be
    reached or answers with an error."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    query: dict[str, str] = {**(params or {}), "limit": str(page)}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as http:
            while True:
                r = http.get(path, params=query)
                if r.status_code != 200:
                    raise LedgerError(f"{url}{path}: {r.status_code} {_error_of(r)}")
                body = r.json()
                yield from body[key]
                after = body.get("next")
                if after is None:
                    return
                query["after"] = after
    except httpx.HTTPError as exc:
        raise LedgerError(f"{url}{path}: {exc}") from exc


def _error_of(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))
    except ValueError:
        return r.text[:200]
