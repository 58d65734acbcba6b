"""The layout finder's calibration barcode: every printable ASCII character, as Code 128.

Kept apart from the finder (:mod:`drivers.calibration`) so that printing the barcode needs only
``python-barcode`` (pure Python), not libxkbcommon's binding: any machine with scan-agent
installed can print it.

>>> len(CALIBRATION_TEXT), CALIBRATION_TEXT[:5], CALIBRATION_TEXT[-5:]
(95, '!"#$%', 'z{|}~')
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from drivers.errors import DriverError

__all__ = ["CALIBRATION_TEXT", "calibration_barcode_svg", "save_svg"]

#: Every printable ASCII character once; the space in the middle, where no scanner trims it.
CALIBRATION_TEXT = "".join(chr(c) for c in range(0x21, 0x41)) + " " + "".join(
    chr(c) for c in range(0x41, 0x7F))


def calibration_barcode_svg(*, module_mm: float = 0.2, height_mm: float = 18.0) -> bytes:
    """The calibration barcode as an SVG image, in true size (print at 100%).

    With 0.2 mm modules (8 mil, which every handheld reads) it is about 22 cm wide: print
    it landscape on A4 or Letter.
    """
    from barcode import Code128
    from barcode.writer import SVGWriter

    out = io.BytesIO()
    Code128(CALIBRATION_TEXT, writer=SVGWriter()).write(out, options={
        "module_width": module_mm, "module_height": height_mm, "quiet_zone": 6.0,
        "write_text": False})
    return out.getvalue()


def save_svg(path: str | Path) -> None:
    """Write the calibration barcode's SVG to ``path`` (``-`` for standard output)."""
    data = calibration_barcode_svg()
    if str(path) == "-":
        sys.stdout.buffer.write(data)
        return
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise DriverError(f"{path}: cannot write the barcode: {exc.strerror or exc}") from exc
