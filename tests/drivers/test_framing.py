"""The byte-stream framer shared by the serial and TCP drivers."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from drivers.base import RawScan
from drivers.framing import GS, STX_ETX, Backoff, Frame, Framer, escape

OK = None  # expected error of a good scan


def frames_of(chunks: list[bytes], **kwargs: Any) -> list[tuple[str, str | None]]:
    framer = Framer(**kwargs)
    out: list[Frame] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return [(f.text, f.error) for f in out]


CASES = [
    # id, framer kwargs, chunks, expected (text, error) frames
    ("auto-cr", {}, [b"LOC-A-01\rLOC-B-02\r"], [("LOC-A-01", OK), ("LOC-B-02", OK)]),
    ("auto-lf", {}, [b"LOC-A-01\nLOC-B-02\n"], [("LOC-A-01", OK), ("LOC-B-02", OK)]),
    ("auto-crlf", {}, [b"LOC-A-01\r\nLOC-B-02\r\n"], [("LOC-A-01", OK), ("LOC-B-02", OK)]),
    ("auto-crlf-split-between-cr-and-lf", {}, [b"LOC-A-01\r", b"\nLOC-B-02\r", b"\n"],
     [("LOC-A-01", OK), ("LOC-B-02", OK)]),
    ("auto-lfcr-and-blank-lines", {}, [b"\r\n\n\rA1\n\r\r\n"], [("A1", OK)]),
    ("auto-one-byte-chunks", {}, [bytes([b]) for b in b"AB\r\nCD\n"], [("AB", OK), ("CD", OK)]),
    ("cr-mode-lf-is-data", {"terminator": "CR"}, [b"A1\rB2\n\r"],
     [("A1", OK), ("B2\\x0a", "non-text bytes: control character 0x0A at byte 2")]),
    ("lf-mode", {"terminator": "LF"}, [b"A1\nB2\n"], [("A1", OK), ("B2", OK)]),
    ("crlf-mode", {"terminator": "CRLF"}, [b"A1\r\nB2\r\n"], [("A1", OK), ("B2", OK)]),
    ("crlf-mode-split-terminator", {"terminator": "CRLF"}, [b"A1\r", b"\nB2\r", b"\n"],
     [("A1", OK), ("B2", OK)]),
    ("crlf-mode-lone-cr-is-data", {"terminator": "CRLF"}, [b"A\rB\r", b"\n"],
     [("A\\x0dB", "non-text bytes: control character 0x0D at byte 1")]),
    ("single-char", {"terminator": "#"}, [b"A1#B2#"], [("A1", OK), ("B2", OK)]),
    ("single-char-tab", {"terminator": "\t"}, [b"A1\tB2\t"], [("A1", OK), ("B2", OK)]),
    ("single-char-multibyte-split", {"terminator": "§"}, [b"A1\xc2", b"\xa7B2\xc2\xa7"],
     [("A1", OK), ("B2", OK)]),
    ("prefix-suffix-stripped", {"prefix": "\x02", "suffix": "\x03"}, [b"\x02A1\x03\r"],
     [("A1", OK)]),
    ("prefix-absent-kept-as-is", {"prefix": "P:", "suffix": ";"}, [b"A1\rP:B2;\r"],
     [("A1", OK), ("B2", OK)]),
    ("gs-kept", {}, [b"]d2010400638133393110LOT7\x1d21SN1\r"],
     [("]d2010400638133393110LOT7\x1d21SN1", OK)]),
    ("aim-ids-kept", {}, [b"]C1010400638133393117270101\r]Q3LOC-A\r]E04006381333931\r"],
     [("]C1010400638133393117270101", OK), ("]Q3LOC-A", OK), ("]E04006381333931", OK)]),
    ("max-length-exact-ok", {"max_length": 8}, [b"01234567\r"], [("01234567", OK)]),
    ("over-long-once-then-next-scan", {"max_length": 8}, [b"0123456789AB", b"CDEF\rOK\r"],
     [("01234567", "over-long scan: more than 8 bytes"), ("OK", OK)]),
    ("over-long-prefix-not-counted", {"max_length": 4, "prefix": "P:"}, [b"P:ABCD\rABCDE\r"],
     [("ABCD", OK), ("ABCD", "over-long scan: more than 4 bytes")]),
    ("nul", {}, [b"AB\x00C\r"], [("AB\\x00C", "non-text bytes: control character 0x00 at byte 2")]),
    ("tab-in-auto", {}, [b"A\tB\r"],
     [("A\\x09B", "non-text bytes: control character 0x09 at byte 1")]),
    ("del", {}, [b"AB\x7f\r"], [("AB\\x7f", "non-text bytes: control character 0x7F at byte 2")]),
    ("invalid-utf8", {}, [b"AB\xffC\r"], [("AB\\xffC", "non-text bytes: invalid utf-8 at byte 2")]),
    ("invalid-after-prefix-offset-in-raw", {"prefix": "P:"}, [b"P:A\xff\r"],
     [("P:A\\xff", "non-text bytes: invalid utf-8 at byte 3")]),
    ("backslash-escaped-in-bad-scan", {}, [b"A\\B\x00\r"],
     [("A\\\\B\\x00", "non-text bytes: control character 0x00 at byte 3")]),
    ("utf8-text", {}, ["Grüße-Ø\r".encode()], [("Grüße-Ø", OK)]),
    ("latin-1", {"encoding": "latin-1"}, [b"Gr\xfc\xdfe\r"], [("Grüße", OK)]),
    ("latin-1-c1-control", {"encoding": "latin-1"}, [b"A\x85\r"],
     [("A\\x85", "non-text bytes: control character 0x85 at byte 1")]),
    ("stx-etx", {"terminator": STX_ETX}, [b"\x02A1\x03\r\n\x02B2\x03"], [("A1", OK), ("B2", OK)]),
    ("stx-etx-noise-ignored", {"terminator": STX_ETX}, [b"junk\x02A1\x03junk\r\n"], [("A1", OK)]),
    ("stx-etx-split", {"terminator": STX_ETX}, [b"\x02A", b"1", b"\x03"], [("A1", OK)]),
    ("stx-etx-gs-and-crlf-inside", {"terminator": STX_ETX}, [b"\x02]d2A\x1dB\x03"],
     [("]d2A\x1dB", OK)]),
    ("stx-etx-missing-etx", {"terminator": STX_ETX}, [b"\x02AB\x02CD\x03"],
     [("AB", "incomplete scan: STX before ETX"), ("CD", OK)]),
    ("stx-etx-over-long", {"terminator": STX_ETX, "max_length": 4}, [b"\x02ABCDEFG\x03\x02OK\x03"],
     [("ABCD", "over-long scan: more than 4 bytes"), ("OK", OK)]),
]


@pytest.mark.parametrize(("kwargs", "chunks", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_framing(kwargs: dict[str, Any], chunks: list[bytes],
                 expected: list[tuple[str, str | None]]) -> None:
    assert frames_of(chunks, **kwargs) == expected


def test_raw_keeps_prefix_and_suffix_and_drops_terminator() -> None:
    framer = Framer(prefix="]C1", suffix=";")
    [frame] = framer.feed(b"]C1ABC;\r\n")
    assert frame == Frame(text="ABC", raw=b"]C1ABC;")


def test_frame_becomes_raw_scan() -> None:
    frame = Frame(text="A", raw=b"A\x00", error="bad")
    assert frame.scan("dock", wall_time=1.5, boot_ns=7) == RawScan(
        scanner="dock", text="A", raw=b"A\x00", wall_time=1.5, boot_ns=7, error="bad"
    )


def test_reset_drops_partial_scan() -> None:
    """A scan cut off by an unplug must not be glued to the first scan after the replug."""
    framer = Framer(terminator="CRLF")
    assert framer.feed(b"LOC-A-0") == []
    assert framer.feed(b"1\r") == []  # the CR is held back: it may start a CRLF
    assert framer.reset() == len(b"LOC-A-01\r")
    assert [f.text for f in framer.feed(b"LOC-B-02\r\n")] == ["LOC-B-02"]


def test_megabyte_line_is_cheap() -> None:
    """A 1 MB line (a scanner at the wrong baud rate, a runaway sender) must not be buffered."""
    framer = Framer(max_length=512)
    frames: list[Frame] = []
    for _ in range(16):
        frames += framer.feed(b"X" * 65536)
        assert framer.pending <= 512
    frames += framer.feed(b"\rOK\r")
    assert [(len(f.text), len(f.raw), f.error) for f in frames] == [
        (512, 512, "over-long scan: more than 512 bytes"),
        (2, 2, None),
    ]


def test_megabyte_chunk_in_one_feed() -> None:
    framer = Framer(max_length=64)
    frames = framer.feed(b"Y" * (1 << 20) + b"\n" + b"Z" * (1 << 20) + b"\nOK\n")
    assert [f.error for f in frames] == [
        "over-long scan: more than 64 bytes", "over-long scan: more than 64 bytes", None
    ]


@pytest.mark.parametrize("terminator", ["", "ETX", "\r\r"], ids=["empty", "word", "two-chars"])
def test_bad_terminator_is_refused(terminator: str) -> None:
    with pytest.raises(ValueError, match="terminator must be auto, CR, LF, CRLF, STX-ETX"):
        Framer(terminator=terminator)


def test_unencodable_terminator_is_refused() -> None:
    with pytest.raises(ValueError, match="terminator '§' cannot be written in ascii"):
        Framer(terminator="§", encoding="ascii")


def test_escape_is_unambiguous() -> None:
    assert escape(b"A\\x00\x00\xff" + GS.encode()) == "A\\\\x00\\x00\\xff\x1d"


def test_backoff_doubles_up_to_cap_and_resets() -> None:
    backoff = Backoff(0.1, 0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1


# -- properties over arbitrary streams ------------------------------------------------------------

PIECES = [b"\r", b"\n", b"\r\n", b"\x02", b"\x03", b"\x1d", b"\x00", b"\xff", b"\xc2", b"\xa7",
          b"#", b"\\", b"]C1", b"0400638133393", b"LOC-A", b"P:", b";", "§".encode()]
STREAMS = st.lists(st.sampled_from(PIECES) | st.binary(max_size=12), max_size=40).map(b"".join)
FRAMERS = st.fixed_dictionaries({
    "terminator": st.sampled_from(["auto", "CR", "LF", "CRLF", "#", "§", STX_ETX]),
    "prefix": st.sampled_from(["", "P:", "\x02"]),
    "suffix": st.sampled_from(["", ";", "\x03"]),
    "max_length": st.integers(1, 24),
    "encoding": st.sampled_from(["utf-8", "latin-1", "ascii"]),
})


@settings(max_examples=400, deadline=None)
@given(kwargs=FRAMERS, stream=STREAMS, data=st.data())
def test_any_stream_any_chunking(
    kwargs: dict[str, Any], stream: bytes, data: st.DataObject
) -> None:
    """Never raises, never emits over-long text, and chunking never changes the frames."""
    try:
        Framer(**kwargs)
    except ValueError:  # e.g. "§" in ASCII: refused when built, never while reading
        assume(False)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    whole = Framer(**kwargs).feed(stream)
    framer = Framer(**kwargs)
    chunked = [f for chunk in chunks for f in framer.feed(chunk)]
    assert chunked == whole

    bytewise = Framer(**kwargs)
    assert [f for b in stream for f in bytewise.feed(bytes([b]))] == whole

    max_length = kwargs["max_length"]
    overhead = len(kwargs["prefix"].encode(kwargs["encoding"])) + len(
        kwargs["suffix"].encode(kwargs["encoding"]))
    for frame in whole:
        assert len(frame.text) <= max_length
        assert 0 < len(frame.raw) <= max_length + overhead
        if frame.error is None:
            assert all(ch == GS or unicodedata.category(ch) != "Cc" for ch in frame.text)
    assert framer.pending <= max_length + overhead + 2
