"""Page images and thumbnails, with Pillow.

Pillow does its pixel work in C and lets go of the GIL while it filters and resizes: in a
worker thread it runs beside the event loop, not against it. On the loop thread it is a block
like any other (tens of milliseconds for each A4 page at 150 dpi).
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFilter

PAGE_SIZE = (1240, 1754)  # A4 at 150 dpi
THUMBNAIL_SIZE = (248, 351)
MARGIN = 120
LINE_HEIGHT = 30


def page_image(lines: list[str]) -> Image.Image:
    """A grey-scale image of one page: each line of text drawn as a bar of its length."""
    img = Image.new("L", PAGE_SIZE, 255)
    draw = ImageDraw.Draw(img)
    width = PAGE_SIZE[0] - 2 * MARGIN
    for i, line in enumerate(lines):
        top = MARGIN + i * LINE_HEIGHT
        draw.rectangle((MARGIN, top, MARGIN + width * len(line) // 100, top + 15), fill=40)
    return img


def thumbnail(page: Image.Image) -> bytes:
    """A small PNG of ``page``: smoothed, then resampled with Lanczos."""
    small = page.filter(ImageFilter.GaussianBlur(3)).resize(THUMBNAIL_SIZE, Image.LANCZOS)
    out = io.BytesIO()
    small.save(out, "PNG")
    return out.getvalue()


def thumbnails(pages: list[list[str]], limit: int = 3) -> list[bytes]:
    """Thumbnails of the first ``limit`` pages."""
    return [thumbnail(page_image(lines)) for lines in pages[:limit]]
