"""Labelled image grids with PIL only (shared by `ghfeat reconstruct` and the editing/demo code)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

Box = tuple[int, int, int, int]
_ELLIPSIS = "..."


def load_font(size: int = 14) -> PIL.ImageFont.ImageFont | PIL.ImageFont.FreeTypeFont:
    """PIL's default font at `size` pixels (scalable when PIL has FreeType, else the fixed bitmap font)."""
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return PIL.ImageFont.load_default()


def to_rgb(image: PIL.Image.Image | np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> PIL.Image.Image:
    """An RGB PIL image for display; arrays are `uint8` `(H, W)` or `(H, W, C)`, `C` in 1, 3, 4; grayscale is
    replicated to RGB; transparency is composited onto `background`."""
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1:] == (1,) else image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = PIL.Image.new("RGBA", rgba.size, (*background, 255))
        return PIL.Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _text_size(draw: PIL.ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    return right, bottom


def _fit_line(draw: PIL.ImageDraw.ImageDraw, line: str, font, max_width: int, keep_end: bool) -> str:
    """Shorten `line` with an ellipsis until it is at most `max_width` pixels wide."""
    if _text_size(draw, line, font)[0] <= max_width:
        return line
    for cut in range(1, len(line)):
        candidate = _ELLIPSIS + line[cut:] if keep_end else line[:-cut] + _ELLIPSIS
        if _text_size(draw, candidate, font)[0] <= max_width:
            return candidate
    return _ELLIPSIS


def _fit_text(draw, text: str, font, max_width: int, keep_end: bool) -> str:
    return "\n".join(_fit_line(draw, line, font, max_width, keep_end) for line in text.split("\n"))


def _fitted(image: PIL.Image.Image, cell: tuple[int, int], resample) -> PIL.Image.Image:
    """Resize `image` to fit `cell` keeping its aspect ratio: NEAREST for integer upscales, LANCZOS otherwise."""
    width, height = image.size
    scale = min(cell[0] / width, cell[1] / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == image.size:
        return image
    if resample is None:
        resample = PIL.Image.Resampling.NEAREST if scale >= 1 and float(scale).is_integer() else \
            PIL.Image.Resampling.LANCZOS
    return image.resize(size, resample=resample)


def enlarged_cell_size(size: int, minimum: int = 128) -> int:
    """``size`` enlarged by the smallest integer factor that reaches ``minimum`` pixels (nearest-neighbour friendly)."""
    return size * max(1, -(-minimum // size))


def make_grid(
    rows: Sequence[Sequence[PIL.Image.Image | np.ndarray | None]],
    column_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    *,
    cell_size: int | tuple[int, int] | None = None,
    padding: int = 4,
    font_size: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    text_color: tuple[int, int, int] = (0, 0, 0),
    resample: int | None = None,
    max_row_label_width: int | None = None,
    return_boxes: bool = False,
) -> PIL.Image.Image | tuple[PIL.Image.Image, list[list[Box | None]]]:
    """Arrange images in a labelled grid.

    Args:
        rows: `rows[r][c]` is a PIL image, a `uint8` array, or `None` (an empty cell). Rows may be ragged.
        column_labels: one label per column, drawn above the first row, centred and shortened to the cell width.
        row_labels: one label per row (may contain newlines), drawn left of the row; lines longer than
            `max_row_label_width` (default: 3 cell widths) are shortened from the left, keeping the end (file names).
        cell_size: cell `(width, height)` (an int is square); defaults to the largest image. Images are resized to
            fit their cell with their aspect ratio kept (nearest-neighbour for integer upscales, else Lanczos,
            unless `resample` is given) and centred in it.
        padding: pixels between cells and around the grid.
        font_size: label size in pixels; default `clip(cell_height // 8, 12, 24)`.
        return_boxes: also return `boxes[r][c]`, the `(left, top, right, bottom)` of each pasted image (or `None`).

    Layout: `left = padding + (row_label_width + padding if row_labels)`, `top = padding + (column_label_height +
    padding if column_labels)`; cell `(r, c)` starts at `(left + c * (cell_w + padding), top + r * (cell_h +
    padding))`; the grid is `left + C * cell_w + C * padding` wide and `top + R * cell_h + R * padding` tall.
    """
    rows = [list(row) for row in rows]
    num_rows = len(rows)
    num_cols = max((len(row) for row in rows), default=0)
    if column_labels is not None:
        num_cols = max(num_cols, len(column_labels))
    if num_rows == 0 or num_cols == 0:
        raise ValueError("make_grid needs at least one row and one column.")
    if row_labels is not None and len(row_labels) != num_rows:
        raise ValueError(f"got {len(row_labels)} row labels for {num_rows} rows.")
    images = [[to_rgb(image, background) if image is not None else None for image in row] for row in rows]
    if cell_size is None:
        sizes = [image.size for row in images for image in row if image is not None]
        if not sizes:
            raise ValueError("make_grid needs a cell_size when every cell is empty.")
        cell = (max(width for width, _ in sizes), max(height for _, height in sizes))
    else:
        cell = (cell_size, cell_size) if isinstance(cell_size, int) else tuple(cell_size)
    font = load_font(font_size or int(np.clip(cell[1] // 8, 12, 24)))
    scratch = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))

    col_texts = [_fit_text(scratch, str(label), font, cell[0], keep_end=True) for label in column_labels or []]
    label_height = max((_text_size(scratch, text, font)[1] for text in col_texts), default=0)
    row_texts = []
    if row_labels is not None:
        limit = max_row_label_width or 3 * cell[0]
        row_texts = [_fit_text(scratch, str(label), font, limit, keep_end=True) for label in row_labels]
    row_label_width = max((_text_size(scratch, text, font)[0] for text in row_texts), default=0)

    left = padding + (row_label_width + padding if row_labels is not None else 0)
    top = padding + (label_height + padding if column_labels is not None else 0)
    width = left + num_cols * (cell[0] + padding)
    height = top + num_rows * (cell[1] + padding)
    grid = PIL.Image.new("RGB", (width, height), background)
    draw = PIL.ImageDraw.Draw(grid)

    for col, text in enumerate(col_texts):
        text_width, _ = _text_size(draw, text, font)
        x = left + col * (cell[0] + padding) + (cell[0] - text_width) // 2
        draw.multiline_text((x, padding), text, fill=text_color, font=font, align="center")
    boxes: list[list[Box | None]] = []
    for r, row in enumerate(images):
        y0 = top + r * (cell[1] + padding)
        if row_texts:
            _, text_height = _text_size(draw, row_texts[r], font)
            draw.multiline_text((padding, y0 + max(0, (cell[1] - text_height) // 2)), row_texts[r],
                                fill=text_color, font=font)
        row_boxes: list[Box | None] = []
        for c in range(num_cols):
            image = row[c] if c < len(row) else None
            if image is None:
                row_boxes.append(None)
                continue
            fitted = _fitted(image, cell, resample)
            x = left + c * (cell[0] + padding) + (cell[0] - fitted.width) // 2
            y = y0 + (cell[1] - fitted.height) // 2
            grid.paste(fitted, (x, y))
            row_boxes.append((x, y, x + fitted.width, y + fitted.height))
        boxes.append(row_boxes)
    return (grid, boxes) if return_boxes else grid


__all__ = ["load_font", "make_grid", "to_rgb"]
