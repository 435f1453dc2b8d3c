"""How a flat buffer is cut into one chunk per rank, and chunks into segments.

The layout is balanced: with ``count = q * size + r``, chunks ``0 .. r-1`` hold
``q + 1`` elements and the rest hold ``q``. Chunk ``i`` is owned by rank ``i``:
after ``reduce_scatter`` it holds the reduced values, and ``allgather`` sends it
to everyone. When ``count < size`` the last chunks are empty, which the ring
handles like any other chunk (a zero-length message).
"""


def chunk_bounds(count: int, size: int, index: int) -> tuple[int, int]:
    """Half-open element range ``[lo, hi)`` of chunk ``index``.

    >>> [chunk_bounds(10, 4, i) for i in range(4)]
    [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    if count < 0 or size < 1 or not 0 <= index < size:
        raise ValueError(f"chunk_bounds: need count >= 0, size >= 1 and 0 <= index < size; "
                         f"got count={count}, size={size}, index={index}")
    q, r = divmod(count, size)
    lo = index * q + min(index, r)
    return lo, lo + q + (index < r)


def segment_count(count: int, size: int, segment_elems: int) -> int:
    """Segments per chunk, the same for every chunk so that all ranks agree.

    >>> segment_count(10, 4, 2)
    2
    """
    largest = -(-count // size)
    return max(1, -(-largest // max(1, segment_elems)))


def segment_bounds(lo: int, hi: int, nseg: int, k: int) -> tuple[int, int]:
    """Element range of segment ``k`` of the chunk ``[lo, hi)`` cut into ``nseg`` parts.

    >>> segment_bounds(3, 6, 2, 1)
    (5, 6)
    """
    a, b = chunk_bounds(hi - lo, nseg, k)
    return lo + a, lo + b
