"""How a tensor is cut into chunks: whole rows of its 2-D view, or aligned runs of one row.

A chunk never straddles a scale group (a channel or a block), so each chunk sees whole groups.
"""

from __future__ import annotations

from collections.abc import Iterator

AMAX_CHUNK = 1 << 20


def iter_chunks(
    rows: int, cols: int, chunk: int, align: int = 1
) -> Iterator[tuple[int, int, int, int]]:
    """Chunks (row0, row1, col0, col1) of a rows × cols view: whole rows when a row fits,
    otherwise column runs of one row whose starts are multiples of `align` (the block size)."""
    if rows == 0 or cols == 0:
        return
    if cols <= chunk:
        step = max(1, chunk // cols)
        for r in range(0, rows, step):
            yield r, min(rows, r + step), 0, cols
        return
    width = max(align, chunk // align * align)
    for r in range(rows):
        for c in range(0, cols, width):
            yield r, r + 1, c, min(cols, c + width)
