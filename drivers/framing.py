"""Byte-stream framing shared by the serial and TCP drivers: bytes in, whole scans out.

Pure: no device, socket or clock. A :class:`Framer` is fed whatever chunks a read returned and
gives back the complete :class:`Frame` values found so far; how the bytes were chunked never
changes the frames. The driver stamps each frame with the time of the read that completed it.

Framing rules:

- ``terminator``: ``"auto"`` (CR, LF or CRLF; a CRLF pair is one terminator), ``"CR"``,
  ``"LF"``, ``"CRLF"``, any single character, or :data:`STX_ETX` (a scan is the bytes between
  STX 0x02 and ETX 0x03; bytes outside a frame are ignored). A frame with no bytes at all is
  never emitted, so the empty "line" between the CR and LF of a CRLF pair never shows up.
- ``prefix`` / ``suffix`` are stripped from a scan when present (``raw`` keeps them).
- GS (0x1D, the GS1 field separator) and AIM symbology identifiers (``]C1``, ``]d2``, ``]Q3``,
  ``]E0``...) stay in ``text``: interpreting them is the agent's job.
- A scan longer than ``max_length`` bytes (prefix and suffix not counted) is emitted once, as
  soon as it overflows, as an error frame holding its first bytes; the rest up to the next
  terminator is discarded. The framer never holds more than about ``max_length`` bytes.
- Bytes that are not text (invalid for ``encoding``, or a control character other than GS,
  NUL included) give an error frame whose ``text`` is escaped for the audit (``\\x00``, ``\\\\``);
  the framer never raises on input.

>>> framer = Framer(terminator="auto", max_length=64)
>>> [f.text for f in framer.feed(b"]C1LOC-A-01\\r\\n0400638")]
[']C1LOC-A-01']
>>> framer.feed(b"1333931\\r")
[Frame(text='04006381333931', raw=b'04006381333931', error=None)]
>>> framer.feed(b"BAD\\x00\\n")[0].error
'non-text bytes: control character 0x00 at byte 3'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers.base import RawScan

__all__ = [
    "GS", "STX_ETX", "TERMINATORS", "Backoff", "Frame", "Framer", "encode_setting", "escape",
]

#: GS1 group separator, kept in scan text.
GS = "\x1d"
# The control characters (Unicode category Cc: C0, DEL and C1) but GS.
_CONTROL = re.compile("[\x00-\x1c\x1e-\x1f\x7f-\x9f]")
#: ``terminator`` value for STX ... ETX framing (fixed-mount readers over TCP).
STX_ETX = "STX-ETX"
#: Named terminators; any other single character is accepted as well.
TERMINATORS: dict[str, bytes] = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n"}

_STX = 0x02
_ETX = 0x03
_AUTO = re.compile(rb"[\r\n]")
_STX_OR_ETX = re.compile(rb"[\x02\x03]")


@dataclass(frozen=True, slots=True)
class Frame:
    """One framed scan: its text, the bytes it came from, and why it is bad, if it is.

    ``raw`` is the frame's bytes without the terminator (prefix and suffix included);
    for an over-long scan, its first bytes only. ``text`` never has more than the framer's
    ``max_length`` characters.
    """

    text: str
    raw: bytes
    error: str | None = None

    def scan(self, scanner: str, *, wall_time: float, boot_ns: int) -> RawScan:
        """This frame as the :class:`~drivers.base.RawScan` of ``scanner``, read at that time."""
        return RawScan(
            scanner=scanner, text=self.text, raw=self.raw, wall_time=wall_time,
            boot_ns=boot_ns, error=self.error,
        )


class Framer:
    """Splits a byte stream into scans; see the module docstring for the rules.

    ``feed()`` returns the frames completed by a chunk; ``reset()`` drops a partial scan (the
    device went away mid-scan, so its start must not be glued to the next one).
    """

    def __init__(
        self,
        *,
        terminator: str = "auto",
        prefix: str = "",
        suffix: str = "",
        max_length: int = 512,
        encoding: str = "utf-8",
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.terminator = terminator
        self.max_length = max_length
        self.encoding = encoding
        self._prefix = encode_setting("prefix", prefix, encoding)
        self._suffix = encode_setting("suffix", suffix, encoding)
        # Prefix and suffix are framing, not scan: they do not count towards max_length.
        self._limit = max_length + len(self._prefix) + len(self._suffix)
        self._stx_etx = terminator == STX_ETX
        self._term: bytes | None = None  # None: auto (CR or LF)
        self._pattern: re.Pattern[bytes] = _AUTO
        if self._stx_etx:
            self._pattern = _STX_OR_ETX
        elif terminator != "auto":
            if terminator in TERMINATORS:
                self._term = TERMINATORS[terminator]
            elif len(terminator) == 1:
                self._term = encode_setting("terminator", terminator, encoding)
            else:
                raise ValueError(
                    "terminator must be auto, CR, LF, CRLF, STX-ETX or a single character, "
                    f"got {terminator!r}"
                )
            self._pattern = re.compile(re.escape(self._term))
        # the bytes that end a scan on their own: a whole scan in one read is framed at once
        self._enders: frozenset[int] = frozenset()
        if not self._stx_etx:
            self._enders = frozenset(b"\r\n" if self._term is None else
                                     self._term if len(self._term) == 1 else b"")
        self._buf = bytearray()  # the scan so far, at most self._limit bytes
        self._held = b""  # trailing bytes that may be the start of a multi-byte terminator
        self._discarding = False  # inside an over-long scan, skipping to its terminator
        self._in_frame = False  # STX-ETX only: between an STX and its ETX

    @property
    def pending(self) -> int:
        """Bytes of a scan received so far but not yet terminated."""
        return len(self._buf) + len(self._held)

    def reset(self) -> int:
        """Forget any partial scan; returns how many bytes were dropped."""
        dropped = self.pending
        self._buf.clear()
        self._held = b""
        self._discarding = False
        self._in_frame = False
        return dropped

    def feed(self, data: bytes) -> list[Frame]:
        """Take the next chunk of the stream; return the scans it completed, in order."""
        out: list[Frame] = []
        if self._held:
            data = self._held + data
            self._held = b""
        if not data:
            return out
        if self._stx_etx:
            self._feed_stx_etx(data, out)
        elif (data[-1] in self._enders and not self._buf and not self._discarding
              and len(data) <= self._limit + 1 and self._pattern.search(data, 0, len(data) - 1)
              is None):
            # the usual read: one whole scan and its terminator, nothing before it
            if len(data) > 1:
                out.append(self._frame(data[:-1]))
        else:
            self._feed_terminated(data, out)
        return out

    def _feed_terminated(self, data: bytes, out: list[Frame]) -> None:
        view = memoryview(data)
        pos = 0
        while True:
            m = self._pattern.search(data, pos)
            if m is None:
                end = len(data) - self._partial_terminator(data, pos)
                self._absorb(view[pos:end], out)
                self._held = data[end:]
                return
            self._absorb(view[pos : m.start()], out)
            self._finish(out)
            pos = m.end()

    def _feed_stx_etx(self, data: bytes, out: list[Frame]) -> None:
        view = memoryview(data)
        pos = 0
        while pos < len(data):
            if not self._in_frame:
                start = data.find(_STX, pos)
                if start < 0:
                    return  # noise between frames (e.g. a CRLF after ETX) is ignored
                self._in_frame = True
                pos = start + 1
                continue
            m = self._pattern.search(data, pos)
            if m is None:
                self._absorb(view[pos:], out)
                return
            self._absorb(view[pos : m.start()], out)
            if data[m.start()] == _ETX:
                self._in_frame = False
                self._finish(out)
            else:  # a new STX: the previous frame lost its ETX
                if self._buf and not self._discarding:
                    out.append(
                        self._error_frame(bytes(self._buf), "incomplete scan: STX before ETX")
                    )
                self._buf.clear()
                self._discarding = False
            pos = m.end()

    def _partial_terminator(self, data: bytes, pos: int) -> int:
        """Length of the longest proper prefix of the terminator that ``data`` ends with."""
        term = self._term
        if term is None or len(term) < 2:
            return 0
        for k in range(min(len(term) - 1, len(data) - pos), 0, -1):
            if data.endswith(term[:k]):
                return k
        return 0

    def _absorb(self, chunk: memoryview, out: list[Frame]) -> None:
        if self._discarding or not chunk:
            return
        room = self._limit - len(self._buf)
        if len(chunk) <= room:
            self._buf += chunk
            return
        self._buf += chunk[:room]
        out.append(self._error_frame(
            bytes(self._buf), f"over-long scan: more than {self.max_length} bytes"
        ))
        self._buf.clear()
        self._discarding = True

    def _finish(self, out: list[Frame]) -> None:
        if self._discarding:
            self._discarding = False
        elif self._buf:
            out.append(self._frame(bytes(self._buf)))
        self._buf.clear()

    def _frame(self, raw: bytes) -> Frame:
        body = raw
        offset = 0  # where body starts in raw: error positions are given in raw bytes
        if self._prefix and body.startswith(self._prefix):
            offset = len(self._prefix)
            body = body[offset:]
        if self._suffix and body.endswith(self._suffix):
            body = body[: -len(self._suffix)]
        if len(body) > self.max_length:  # the prefix or suffix was not there to strip
            return self._error_frame(
                raw[: self.max_length], f"over-long scan: more than {self.max_length} bytes"
            )
        try:
            text = body.decode(self.encoding)
        except UnicodeDecodeError as exc:
            return self._error_frame(
                raw, f"non-text bytes: invalid {self.encoding} at byte {offset + exc.start}"
            )
        if (bad := _CONTROL.search(text)) is not None:
            i = bad.start()
            at = offset + len(text[:i].encode(self.encoding))
            return self._error_frame(
                raw, f"non-text bytes: control character 0x{ord(text[i]):02X} at byte {at}"
            )
        return Frame(text=text, raw=raw)

    def _error_frame(self, raw: bytes, error: str) -> Frame:
        return Frame(text=escape(raw, self.encoding)[: self.max_length], raw=raw, error=error)


def encode_setting(what: str, value: str, encoding: str) -> bytes:
    """``value`` (a configured terminator, prefix, ACK...) as bytes; ValueError naming it."""
    try:
        return value.encode(encoding)
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r} cannot be written in {encoding}") from None


def escape(raw: bytes, encoding: str = "utf-8") -> str:
    """Printable text for bytes that are not a valid scan: for the audit and the logs.

    Undecodable bytes and control characters (except GS) become ``\\xNN``, and a backslash
    becomes ``\\\\``, so the escaped text is unambiguous.

    >>> escape(b"A\\x00\\xff\\\\")
    'A\\\\x00\\\\xff\\\\\\\\'
    """
    text = raw.decode(encoding, errors="surrogateescape")
    parts: list[str] = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte, smuggled by surrogateescape
            parts.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\":
            parts.append("\\\\")
        elif _CONTROL.match(ch):
            parts.append(f"\\x{o:02x}")
        else:
            parts.append(ch)
    return "".join(parts)


class Backoff:
    """Capped exponential delays between reconnect attempts: start, 2x start, ... cap.

    >>> b = Backoff(0.1, 0.3)
    >>> [b.next() for _ in range(4)]
    [0.1, 0.2, 0.3, 0.3]
    """

    def __init__(self, start: float = 0.1, cap: float = 5.0) -> None:
        if start <= 0 or cap < start:
            raise ValueError(f"backoff needs 0 < start <= cap, got start={start}, cap={cap}")
        self.start = start
        self.cap = cap
        self._next = start

    def next(self) -> float:
        """The delay before the next attempt (and double it for the one after)."""
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        """Connected again: the next failure starts over from ``start``."""
        self._next = self.start
