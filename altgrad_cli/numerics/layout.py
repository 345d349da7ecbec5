"""How a tensor is cut into chunks: whole rows of its 2-D view, or aligned runs of one row.

A chunk never cuts a 1-D block (runs of one row start at block boundaries). The amax pass reads
whole tiles (`iter_tile_chunks`), so each read reduces whole groups; the analysis chunks need
only whole rows, since their scales are known by then.
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


def _band_starts(rows: int, per_matrix: int, tile: int) -> list[int]:
    """Starts of the tile rows of a rows-row view made of per_matrix-row matrices, plus `rows`."""
    if tile == 1 or per_matrix % tile == 0:
        return [*range(0, rows, tile), rows]
    starts = [m + r for m in range(0, rows, per_matrix) for r in range(0, per_matrix, tile)]
    return [*starts, rows]


def iter_tile_chunks(
    rows: int, cols: int, per_matrix: int, tile: int, width: int, chunk: int
) -> Iterator[tuple[int, int, int, int]]:
    """Chunks (row0, row1, col0, col1) holding whole tile × width tiles (partial ones only at a
    matrix's edges): runs of whole tile rows while they fit in `chunk` elements, otherwise one
    tile row cut into column runs whose starts are multiples of `width`."""
    if rows == 0 or cols == 0:
        return
    if tile == 1:
        yield from iter_chunks(rows, cols, chunk, width)
        return
    starts = _band_starts(rows, per_matrix, tile)
    i = 0
    while i < len(starts) - 1:
        r0 = starts[i]
        j = i + 1
        while j < len(starts) - 1 and (starts[j + 1] - r0) * cols <= chunk:
            j += 1
        r1 = starts[j]
        if (r1 - r0) * cols <= chunk:
            yield r0, r1, 0, cols
        else:  # one tile row too big for a chunk: column runs across its rows
            step = max(width, chunk // (r1 - r0) // width * width)
            for c in range(0, cols, step):
                yield r0, r1, c, min(cols, c + step)
        i = j
