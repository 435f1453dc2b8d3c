"""Chunk and segment bounds: property-based checks of the layout every rank must agree on."""
from hypothesis import given
from hypothesis import strategies as st

import pytest
from ringtrain.collectives.layout import chunk_bounds, segment_bounds, segment_count


@given(count=st.integers(0, 10**7), size=st.integers(1, 512))
def test_chunks_tile_the_buffer_and_are_balanced(count, size):
    bounds = [chunk_bounds(count, size, i) for i in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    lengths = [hi - lo for lo, hi in bounds]
    assert max(lengths) - min(lengths) <= 1
    # The larger chunks come first, so chunk 0 is always a largest one.
    assert lengths == sorted(lengths, reverse=True)


@given(lo=st.integers(0, 10**6), length=st.integers(0, 10**6), nseg=st.integers(1, 64))
def test_segments_tile_a_chunk(lo, length, nseg):
    segs = [segment_bounds(lo, lo + length, nseg, k) for k in range(nseg)]
    assert segs[0][0] == lo and segs[-1][1] == lo + length
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))


@given(count=st.integers(0, 10**7), size=st.integers(1, 64), seg=st.integers(1, 10**6))
def test_segment_count_keeps_segments_within_the_limit(count, size, seg):
    nseg = segment_count(count, size, seg)
    largest = chunk_bounds(count, size, 0)
    lo, hi = segment_bounds(*largest, nseg, 0)
    assert nseg >= 1 and hi - lo <= max(seg, 1)


def test_worked_example_from_the_docs():
    assert [chunk_bounds(10, 4, i) for i in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]


@pytest.mark.parametrize("args", [(-1, 2, 0), (4, 0, 0), (4, 2, 2), (4, 2, -1)])
def test_bad_layout_arguments_are_rejected(args):
    with pytest.raises(ValueError, match="chunk_bounds"):
        chunk_bounds(*args)
