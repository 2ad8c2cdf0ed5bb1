"""The few reportlab flowables the triage report is drawn with, each laid out once.

Why not platypus ``Table``s: a one-cell table around a paragraph (a coloured banner, a
boxed disclaimer) wraps its paragraph two or three times and draws through a general
grid engine; nested tables multiply that. These draw the same boxes, rules and columns
straight onto the canvas after one wrap per paragraph (issue 10: the report's cost).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from reportlab.lib.colors import Color
from reportlab.lib.utils import ImageReader
from reportlab.platypus import Flowable, Paragraph


class EncodedJpeg(ImageReader):
    """An encoded JPEG for ``canvas.drawImage``: embedded as it is (DCTDecode) and named in
    the PDF by a hash of its bytes. reportlab's own reader decodes the pixels again only to
    hash them. Same bytes in, same PDF out (reports are byte-for-byte reproducible)."""

    def __init__(self, jpeg: bytes, width: int, height: int) -> None:  # no super(): no PIL image
        self.fileName = "thumbnail.jpg"
        self._ident = None
        self._image = None
        self._data = None
        self._dataA = None
        self._transparent = None
        self.mode = "RGB"
        self._jpeg = jpeg
        self._width, self._height = width, height

    def jpeg_fh(self) -> io.BytesIO:
        return io.BytesIO(self._jpeg)

    def getSize(self) -> tuple[int, int]:  # noqa: N802 - reportlab's name
        return self._width, self._height

    def getRGBData(self) -> bytes:  # noqa: N802 - reportlab's name
        return self._jpeg  # only hashed, to name the image object


@dataclass(frozen=True)
class Box:
    """Padding, fill and border of a :class:`Panel` (points; None: not drawn)."""

    left: float = 0
    right: float = 0
    top: float = 0
    bottom: float = 0
    fill: Color | None = None
    stroke: Color | None = None
    stroke_width: float = 0.0
    rule_below: tuple[float, Color] | None = None  # a line under the panel (width, colour)


class Panel(Flowable):
    """Flowables stacked top to bottom inside a padded box; ``items`` are (flowable, space
    after it). One wrap per item."""

    def __init__(self, items: Sequence[tuple[Flowable, float]], width: float, box: Box = Box()) -> None:
        super().__init__()
        self.items = list(items)
        self.width = width
        self.box = box
        self._sizes: list[tuple[float, float]] = []

    def wrap(self, available_width: float, available_height: float) -> tuple[float, float]:
        inner = self.width - self.box.left - self.box.right
        self._sizes = [f.wrap(inner, available_height) for f, _ in self.items]
        self.height = (self.box.top + self.box.bottom + sum(h for _, h in self._sizes)
                       + sum(space for _, space in self.items))
        return self.width, self.height

    def draw(self) -> None:
        c, b = self.canv, self.box
        if b.fill is not None or b.stroke is not None:
            c.saveState()
            if b.fill is not None:
                c.setFillColor(b.fill)
            if b.stroke is not None:
                c.setStrokeColor(b.stroke)
                c.setLineWidth(b.stroke_width)
            c.rect(0, 0, self.width, self.height, stroke=int(b.stroke is not None),
                   fill=int(b.fill is not None))
            c.restoreState()
        if b.rule_below is not None:
            c.saveState()
            c.setLineWidth(b.rule_below[0])
            c.setStrokeColor(b.rule_below[1])
            c.line(0, 0, self.width, 0)
            c.restoreState()
        y = self.height - b.top
        for (f, space), (_, h) in zip(self.items, self._sizes):
            y -= h
            f.drawOn(c, b.left, y)
            y -= space


class Columns(Flowable):
    """Two stacks side by side (fixed widths), aligned at the top or the bottom."""

    def __init__(self, left: Flowable, right: Flowable, left_width: float, right_width: float,
                 valign: str = "top") -> None:
        super().__init__()
        self.left, self.right = left, right
        self.left_width, self.right_width = left_width, right_width
        self.width = left_width + right_width
        self.valign = valign
        self._heights = (0.0, 0.0)

    def wrap(self, available_width: float, available_height: float) -> tuple[float, float]:
        _, hl = self.left.wrap(self.left_width, available_height)
        _, hr = self.right.wrap(self.right_width, available_height)
        self._heights = (hl, hr)
        self.height = max(hl, hr)
        return self.width, self.height

    def draw(self) -> None:
        hl, hr = self._heights
        top = self.valign == "top"
        self.left.drawOn(self.canv, 0, self.height - hl if top else 0)
        self.right.drawOn(self.canv, self.left_width, self.height - hr if top else 0)


class FramedPicture(Flowable):
    """A JPEG centred in a square frame (fill and a thin border)."""

    def __init__(self, image: EncodedJpeg, draw_width: float, draw_height: float, frame: float,
                 fill: Color, stroke: Color, stroke_width: float = 0.5) -> None:
        super().__init__()
        self.image = image
        self.draw_width, self.draw_height = draw_width, draw_height
        self.width = self.height = frame
        self.fill, self.stroke, self.stroke_width = fill, stroke, stroke_width

    def wrap(self, available_width: float, available_height: float) -> tuple[float, float]:
        return self.width, self.height

    def draw(self) -> None:
        c = self.canv
        c.saveState()
        c.setFillColor(self.fill)
        c.setStrokeColor(self.stroke)
        c.setLineWidth(self.stroke_width)
        c.rect(0, 0, self.width, self.height, stroke=1, fill=1)
        c.restoreState()
        c.drawImage(self.image, (self.width - self.draw_width) / 2, (self.height - self.draw_height) / 2,
                    self.draw_width, self.draw_height, mask=None)


class FixedParagraph(Paragraph):
    """A paragraph whose text and style never change (title, headings, the disclaimer):
    parsed once per process and broken into lines once per width. Layout keeps one template
    per text and draws a shallow copy of it in each report (a flowable holds the canvas it
    is drawn on)."""

    def __init__(self, text: str, style) -> None:  # noqa: ANN001 - a ParagraphStyle
        super().__init__(text, style)
        self._broken: dict[float, tuple] = {}  # shared by the copies: same text, same lines

    def wrap(self, available_width: float, available_height: float) -> tuple[float, float]:
        done = self._broken.get(available_width)
        if done is None:
            super().wrap(available_width, available_height)
            done = (self.width, self.height, self._wrapWidths, self.blPara)
            self._broken[available_width] = done
        self.width, self.height, self._wrapWidths, self.blPara = done
        return self.width, self.height
