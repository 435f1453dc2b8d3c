"""The handshake's code: every enumerated value round-trips, and distinct options never share a code."""
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringtrain.collectives.algorithms import (ALGORITHMS, BROADCAST_ALGORITHMS, BROADCAST_AUTO, NODE_AWARE_AUTO,
                                              SCATTER_ALGORITHMS)
from ringtrain.collectives.buffers import SUPPORTED
from ringtrain.collectives.signature import SIGNATURE, Slot, Slots

ENUMERATED = {slot.name: slot.values for slot in SIGNATURE.slots if slot.values is not None}
WIDE = {slot.name: slot.width for slot in SIGNATURE.slots if slot.values is None}  # root, thread
EDGES = {name: (0, 1, (1 << width) - 1) for name, width in WIDE.items()}


def every_enumerated_tuple():
    names = list(ENUMERATED)
    for values in itertools.product(*ENUMERATED.values()):
        yield dict(zip(names, values))


def test_the_slots_are_the_ones_the_collectives_need():
    assert list(ENUMERATED) == ["collective", "dtype", "op", "algorithm"] and list(WIDE) == ["root", "thread"]
    assert set(ENUMERATED["dtype"]) == set(SUPPORTED)
    # Every algorithm a collective can run, once its automatic choice is made, has a code.
    runnable = set(ALGORITHMS + BROADCAST_ALGORITHMS + SCATTER_ALGORITHMS) - {NODE_AWARE_AUTO, BROADCAST_AUTO}
    assert set(ENUMERATED["algorithm"]) == runnable
    assert SIGNATURE.bits <= 63


def test_every_enumerated_value_round_trips_with_the_wide_fields_at_their_edges():
    for fields in every_enumerated_tuple():
        for root, thread in itertools.product(EDGES["root"], EDGES["thread"]):
            packed = dict(fields, root=root, thread=thread)
            code = SIGNATURE.pack(**packed)
            assert 0 <= code < 1 << 63
            assert SIGNATURE.unpack(code) == packed


def test_distinct_enumerated_tuples_never_share_a_code():
    for root, thread in itertools.product(EDGES["root"], EDGES["thread"]):
        codes = [SIGNATURE.pack(**fields, root=root, thread=thread) for fields in every_enumerated_tuple()]
        assert len(set(codes)) == len(codes) == len(list(every_enumerated_tuple()))


fields = st.fixed_dictionaries({**{name: st.sampled_from(values) for name, values in ENUMERATED.items()},
                                **{name: st.integers(0, (1 << width) - 1) for name, width in WIDE.items()}})


@given(fields)
def test_any_fields_round_trip(chosen):
    assert SIGNATURE.unpack(SIGNATURE.pack(**chosen)) == chosen


@given(fields, fields)
def test_different_fields_give_different_codes(a, b):
    assert (SIGNATURE.pack(**a) == SIGNATURE.pack(**b)) == (a == b)


@given(fields)
def test_the_thread_slot_is_what_the_handshake_xors_in(chosen):
    # comm.handshake XORs the thread's name, packed alone, into a collective's code packed without it.
    thread = chosen.pop("thread")
    assert SIGNATURE.pack(**chosen) ^ SIGNATURE.pack(thread=thread) == SIGNATURE.pack(**chosen, thread=thread)


@pytest.mark.parametrize("field, value, said", [
    ("dtype", "complex64", "dtype='complex64' has no code"),
    ("algorithm", "auto", "algorithm='auto' has no code"),
    ("root", 1 << 19, "root=524288 does not fit its slot: a whole number from 0 to 524287"),
    ("root", -1, "root=-1 does not fit"),
    ("root", True, "root=True does not fit"),
    ("thread", 1 << 32, "thread=4294967296 does not fit"),
    ("colour", "red", "colour='red': no such slot"),
])
def test_a_value_with_no_code_is_refused_by_name(field, value, said):
    with pytest.raises(ValueError, match=said):
        SIGNATURE.pack(**{field: value})


def test_an_enumeration_too_large_for_its_slot_stops_construction():
    # A ninth dtype in a 3-bit slot: packing it would spill into the next field.
    nine = tuple(f"dtype{i}" for i in range(9))
    Slots(Slot("dtype", 3, nine[:8]), Slot("op", 1, ("sum", "mean")))
    with pytest.raises(ValueError, match="slot 'dtype': 9 values do not fit 3 bits"):
        Slots(Slot("dtype", 3, nine), Slot("op", 1, ("sum", "mean")))


@pytest.mark.parametrize("slots, said", [
    ((Slot("a", 40), Slot("b", 24)), "64 bits in all do not fit"),
    ((Slot("a", 2, ("x", "x")),), "repeat one"),
    ((Slot("a", 2), Slot("a", 3)), "slot names"),
])
def test_slots_that_cannot_pack_are_refused(slots, said):
    with pytest.raises(ValueError, match=said):
        Slots(*slots)
