"""Item names from a CSV file (``scan-ledger items import``). Pure: text in, rows or errors out.

The file has a header row holding at least ``item`` (the code exactly as stations send it: a
GTIN-14 or a SKU) and ``name``; other columns are ignored, so an ERP's export can be used as it
is. Commas, semicolons or tabs separate the fields (as the header row shows); a UTF-8 byte order
mark is fine. A file with any bad row imports nothing: every problem is reported with its line
and column, so one corrected file goes in whole.

>>> parse_items("item,name\\n04006381333931,Mug 0.3 l\\n", "items.csv").names
[('04006381333931', 'Mug 0.3 l')]
>>> parse_items("item;name\\n;Mug\\n", "items.csv")
Traceback (most recent call last):
ledger.errors.ItemFileError: items.csv: nothing imported; fix these and import again:
  line 2, column item: empty
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from ledger.errors import ItemFileError

__all__ = ["MAX_ITEM", "MAX_NAME", "ItemNames", "parse_items", "read_items"]

MAX_ITEM = 256  # what the ledger accepts as an item code
MAX_NAME = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class ItemNames:
    """A parsed file: ``(item, name)`` pairs in file order, and hints that are not errors."""

    names: list[tuple[str, str]]
    hints: list[str]


def read_items(path: str | Path) -> ItemNames:
    """Read and parse an item-names CSV file."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ItemFileError(name, ["file not found"]) from None
    except IsADirectoryError:
        raise ItemFileError(name, ["is a directory, expected a CSV file"]) from None
    except OSError as exc:
        raise ItemFileError(name, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ItemFileError(name, [f"line {line}: not UTF-8 text (byte {exc.start}); save "
                                   "the file as UTF-8 CSV"]) from None
    return parse_items(text, name)


def parse_items(text: str, file: str = "<items>") -> ItemNames:
    """Parse the CSV text of an item-names file (see the module docstring)."""
    text = text.removeprefix("\ufeff")
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    problems: list[str] = []
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ItemFileError(file, [f"line 1: {exc}"]) from None
    if header is None or not any(h.strip() for h in header):
        raise ItemFileError(file, ["line 1: empty; expected a header row with the columns "
                                   "item and name"])
    columns = [h.strip().lower() for h in header]
    missing = [c for c in ("item", "name") if c not in columns]
    if missing:
        raise ItemFileError(file, [f"line 1: no column {' and no column '.join(missing)} in the "
                                   f"header ({', '.join(map(repr, header))}); the header row "
                                   "needs item and name"])
    for c in ("item", "name"):
        if columns.count(c) > 1:
            raise ItemFileError(file, [f"line 1: column {c} appears twice in the header"])
    i_item, i_name = columns.index("item"), columns.index("name")
    names: dict[str, tuple[str, int]] = {}
    unpadded = 0
    start = reader.line_num + 1  # a quoted field may span lines: name the record's first
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue  # blank lines are fine
            if len(row) <= max(i_item, i_name):
                problems.append(f"line {line}: {len(row)} field(s), expected at least "
                                f"{max(i_item, i_name) + 1} (as the header)")
                continue
            item, name = row[i_item].strip(), row[i_name].strip()
            bad = False
            for col, value, limit in (("item", item, MAX_ITEM), ("name", name, MAX_NAME)):
                if not value:
                    problems.append(f"line {line}, column {col}: empty")
                    bad = True
                elif len(value) > limit:
                    problems.append(f"line {line}, column {col}: {len(value)} characters, "
                                    f"at most {limit}")
                    bad = True
                elif _CONTROL.search(value):
                    problems.append(f"line {line}, column {col}: holds a control character "
                                    "(a line break or tab inside the field?)")
                    bad = True
            if bad:
                continue
            if item in names and names[item][0] != name:
                problems.append(f"line {line}, column name: item {item} is already named "
                                f"{names[item][0]!r} on line {names[item][1]}")
                continue
            names.setdefault(item, (name, line))
            if item.isdigit() and len(item) in (8, 12, 13):
                unpadded += 1
    except csv.Error as exc:
        problems.append(f"line {start}: {exc} (a quote not closed?)")
    if problems:
        raise ItemFileError(file, problems)
    hints = []
    if unpadded:
        hints.append(f"{unpadded} item code(s) have 8, 12 or 13 digits; stations send GTINs as "
                     "14 digits (with leading zeros), so those names only show for codes sent "
                     "exactly so")
    return ItemNames([(item, v[0]) for item, v in names.items()], hints)
