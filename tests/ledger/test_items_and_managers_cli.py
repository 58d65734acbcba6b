"""``scan-ledger items import`` and ``scan-ledger manager add|revoke`` on a real database, and
a running server that sees what they did at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.cli import main
from ledger.store import open_store
from tests.ledger.factory import pick


def names(db: str | Path) -> dict[str, str]:
    with open_store(db) as store:
        return store.item_names(["04006381333931", "SKU-000123", "05901234123457"])


def test_import_then_reimport_updates(tmp_path: Path, ledger_db: str | Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    db = ledger_db
    f = tmp_path / "items.csv"
    f.write_text("item,name,unit\n04006381333931,Mug 0.3 l,pcs\nSKU-000123,Tea 250 g,box\n")
    assert main(["items", "import", str(f), "--db", str(db)]) == 0
    assert "2 item names: 2 added, 0 updated, 0 unchanged" in capsys.readouterr().out
    # Excel's flavour: byte order mark, semicolons, columns in another order, blank lines
    f.write_bytes("\ufeffName;Item\r\nMug, porcelain 0.3 l;04006381333931\r\n\r\n"
                  "Tea 250 g;SKU-000123\r\nLemonade;05901234123457\r\n".encode())
    assert main(["items", "import", str(f), "--db", str(db)]) == 0
    assert "3 item names: 1 added, 1 updated, 1 unchanged" in capsys.readouterr().out
    assert names(db) == {"04006381333931": "Mug, porcelain 0.3 l", "SKU-000123": "Tea 250 g",
                         "05901234123457": "Lemonade"}


@pytest.mark.parametrize(("text", "problems"), [
    ("", ["line 1: empty; expected a header row with the columns item and name"]),
    ("code,name\n1,x\n", ["line 1: no column item in the header ('code', 'name')"]),
    ("item,title\n1,x\n", ["line 1: no column name in the header"]),
    ("item,name\n,Mug\n04006381333931,\n", ["line 2, column item: empty",
                                           "line 3, column name: empty"]),
    ("item,name\n04006381333931\n", ["line 2: 1 field(s), expected at least 2"]),
    ("item,name\nA," + "n" * 201 + "\n", ["line 2, column name: 201 characters, at most 200"]),
    ("item,name\nA,Mug\nA,Cup\n", ["line 3, column name: item A is already named 'Mug' on "
                                   "line 2"]),
    ('item,name\nA,"two\nlines"\n', ["line 2, column name: holds a control character"]),
    ('item,name\nA,"open\n', ["line 2: unexpected end of data"]),
], ids=["empty", "no-item", "no-name", "empty-cells", "short-row", "long-name", "two-names",
        "line-break", "bad-quote"])
def test_a_bad_file_imports_nothing_and_says_where(tmp_path: Path, ledger_db: str | Path,
                                                   text: str, problems: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = ledger_db
    f = tmp_path / "items.csv"
    f.write_text("item,name\nKEEP,Kept\n")
    assert main(["items", "import", str(f), "--db", str(db)]) == 0
    capsys.readouterr()
    f.write_text(text + "ZZZ,Never imported\n" if text.endswith("\n") and "bad" not in text
                 else text)
    assert main(["items", "import", str(f), "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert f"{f}: nothing imported" in err
    for p in problems:
        assert p in err, err
    with open_store(db) as store:
        assert store.item_names(["KEEP", "ZZZ", "A"]) == {"KEEP": "Kept"}


def test_import_hints_at_unpadded_gtins_and_refuses_other_encodings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    f = tmp_path / "items.csv"
    f.write_text("item,name\n4006381333931,Mug\n")
    assert main(["items", "import", str(f), "--db", str(db)]) == 0
    assert "stations send GTINs as 14 digits" in capsys.readouterr().err
    f.write_bytes("item,name\nA,Tasse f\xfcr Tee\n".encode("latin-1"))
    assert main(["items", "import", str(f), "--db", str(db)]) == 1
    assert "line 2: not UTF-8 text" in capsys.readouterr().err
    assert main(["items", "import", str(tmp_path / "nope.csv"), "--db", str(db)]) == 1
    assert "nope.csv: nothing imported" in capsys.readouterr().err


def test_a_running_server_shows_imported_names_at_once(ledger: Any, tmp_path: Path) -> None:
    ledger.dock("d").post(pick(1, "A-01", 5, station="d"))
    assert ledger.incidents()[0]["item_name"] is None
    f = tmp_path / "items.csv"
    f.write_text("item,name\n04006381333931,Mug 0.3 l\n")
    out = subprocess.run([sys.executable, "-m", "ledger", "items", "import", str(f), "--db",
                          str(ledger.server.db_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert ledger.incidents()[0]["item_name"] == "Mug 0.3 l"
    assert "Mug 0.3 l" in ledger.http.get("/").text


def test_manager_add_prints_a_token_once_and_stores_its_hash(
        ledger: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ledger.dock("d").post(pick(1, "A-01", 5, station="d"))
    db = str(ledger.server.db_path)
    assert main(["manager", "add", "anna", "--db", db]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as pg:
            stored = pg.execute("SELECT token_hash FROM managers").fetchall()
    else:
        with sqlite3.connect(db) as conn:
            stored = conn.execute("SELECT token_hash FROM managers").fetchall()
    assert len(stored) == 1 and token not in stored[0][0]
    notes = f"{ledger.server.url}/v1/negatives/{ledger.incidents()[0]['id']}/notes"
    r = httpx.post(notes, json={"text": "seen"},
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201 and r.json()["note"]["author"] == "anna"
    assert main(["manager", "add", "anna", "--db", db]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["manager", "revoke", "anna", "--db", db]) == 0
    r = httpx.post(notes, json={"text": "again"},
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert [n["text"] for n in ledger.incidents()[0]["notes"]] == ["seen"], "notes stay"
    assert main(["manager", "revoke", "anna", "--db", db]) == 1
