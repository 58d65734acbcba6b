"""Fixtures: a real ledger server on 127.0.0.1, port 0, over a real database: every test that
takes ``ledger`` or ``make_ledger`` runs twice, on a SQLite file and on a fresh database of a
throwaway PostgreSQL cluster (started once per session by :mod:`tests.pgcluster`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.server import LedgerServer
from tests.ledger.factory import batch
from tests.pgcluster import PgCluster, pg_missing


class Dock:
    """A registered station posting batches to the ledger over HTTP."""

    def __init__(self, server: LedgerServer, name: str, site: str = "WH1") -> None:
        self.server = server
        self.name = name
        self.token = server.add_station(name, site)
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def post_raw(self, body: Any, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return self.http.post("/v1/events", json=body, headers=headers)

    def post(self, *events: dict[str, Any], watermark: str | None = None) -> list[dict[str, Any]]:
        r = self.post_raw(batch(list(events), station=self.name, watermark=watermark))
        assert r.status_code == 200, r.text
        results: list[dict[str, Any]] = r.json()["results"]
        return results

    def close(self) -> None:
        self.http.close()


class Ledger:
    """The server plus read helpers."""

    def __init__(self, server: LedgerServer) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.docks: list[Dock] = []

    def dock(self, name: str = "dock-1", site: str = "WH1") -> Dock:
        d = Dock(self.server, name, site)
        self.docks.append(d)
        return d

    def get(self, path: str, **params: Any) -> Any:
        r = self.http.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def incidents(self, **params: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.get("/v1/negatives", **params)["incidents"]
        return out

    def incident_of(self, ev: dict[str, Any]) -> dict[str, Any]:
        (inc,) = [i for i in self.incidents() if i["depletion_event_id"] == ev["event_id"]]
        return inc

    def on_hand(self, location: str, item: str = "04006381333931") -> int:
        rows = self.get("/v1/balances", item=item, location=location)["balances"]
        return int(rows[0]["on_hand"]) if rows else 0

    def close(self) -> None:
        for d in self.docks:
            d.close()
        self.http.close()


def write_config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ledger.toml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the session (each test gets its own database)."""
    why = pg_missing()
    if why is not None:
        pytest.skip(why)
    with PgCluster.running() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def new_db(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str | Path]:
    """A new, empty ledger database on each call: a SQLite file of that name in the test's
    directory, or a new database of the throwaway PostgreSQL cluster."""
    if request.param == "sqlite":
        return lambda name: tmp_path / name
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return lambda name: cluster.create_database()


@pytest.fixture
def ledger_db(new_db: Callable[[str], str | Path]) -> str | Path:
    """Where the test's ledger keeps its data: a SQLite file, or a new PostgreSQL database."""
    return new_db("ledger.db")


@pytest.fixture
def make_ledger(tmp_path: Path, ledger_db: str | Path) -> Iterator[Any]:
    """Start a ledger (optionally with config text); all are stopped at the end. Every
    ledger of a test shares the test's database (``db`` is a restart's SQLite file)."""
    started: list[tuple[LedgerServer, Ledger]] = []

    def make(config: str | None = None, db: Path | None = None) -> Ledger:
        cfg = write_config(tmp_path, config) if config is not None else None
        where = ledger_db if db is None or db == tmp_path / "ledger.db" else db
        srv = LedgerServer(where, cfg).start()
        led = Ledger(srv)
        started.append((srv, led))
        return led

    yield make
    for srv, led in started:
        led.close()
        srv.stop()


@pytest.fixture
def ledger(make_ledger: Any) -> Ledger:
    led: Ledger = make_ledger()
    return led
