"""The handshake's signature: a collective call's options packed into fixed-width bit slots.

Every rank packs the options of its call (which collective, the dtype, the op,
the algorithm that will run, the root) and the calling thread's name into one
int64, and the handshake (comm.py) checks that every rank has the same one.
Each field has a slot of its own with a declared width, so calls that differ
in any field always differ in the code. A dtype or algorithm too many for its
slot stops the import (``Slots`` checks that every enumerated value fits)
instead of spilling into the next field, where a real mismatch could pass.
"""
from typing import NamedTuple

from .algorithms import OPS, RUNNABLE
from .buffers import SUPPORTED

COLLECTIVES = ("allreduce", "reduce_scatter", "allgather", "broadcast")


class Slot(NamedTuple):
    """One field: ``width`` bits, holding an index into ``values``, or, with no values, a whole number."""

    name: str
    width: int
    values: tuple | None = None


class Slots:
    """Named fields side by side from bit 0, packed into one non-negative int64.

    >>> s = Slots(Slot("colour", 2, ("red", "green")), Slot("size", 3))
    >>> s.pack(colour="green", size=5), s.unpack(21)
    (21, {'colour': 'green', 'size': 5})
    """

    def __init__(self, *slots: Slot):
        self.slots = slots
        self._slot = {slot.name: slot for slot in slots}
        if len(self._slot) != len(slots):
            raise ValueError(f"slot names {[slot.name for slot in slots]} repeat one")
        self._shift: dict[str, int] = {}
        self._index: dict[str, dict] = {}  # an enumerated field's value -> its index
        shift = 0
        for slot in slots:
            if slot.values is not None:
                if len(set(slot.values)) != len(slot.values):
                    raise ValueError(f"slot {slot.name!r}: values {slot.values} repeat one")
                if len(slot.values) > 1 << slot.width:
                    raise ValueError(f"slot {slot.name!r}: {len(slot.values)} values do not fit {slot.width} bits "
                                     f"(at most {1 << slot.width}); widen it")
                self._index[slot.name] = {v: i for i, v in enumerate(slot.values)}
            self._shift[slot.name] = shift
            shift += slot.width
        if shift > 63:  # bit 63 is int64's sign: the handshake negates codes
            raise ValueError(f"slots of {shift} bits in all do not fit a non-negative int64 (63 bits)")
        self.bits = shift

    def pack(self, **fields) -> int:
        """The code of ``fields``; a field not given packs as 0 (its first value).

        Raises ValueError naming a field that is not a slot, or a value its slot cannot hold.
        """
        code = 0
        for name, value in fields.items():
            slot = self._slot.get(name)
            if slot is None:
                raise ValueError(f"{name}={value!r}: no such slot; the slots are {list(self._slot)}")
            index, width = self._index.get(name), slot.width
            if index is not None:
                number = index.get(value)
                if number is None:
                    raise ValueError(f"{name}={value!r} has no code; allowed: {tuple(index)}")
            elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << width:
                raise ValueError(f"{name}={value!r} does not fit its slot: a whole number from 0 to {(1 << width) - 1}")
            else:
                number = value
            code |= number << self._shift[name]
        return code

    def unpack(self, code: int) -> dict:
        """The fields ``pack`` put into ``code``, every slot named."""
        fields = {}
        for slot in self.slots:
            number = code >> self._shift[slot.name] & (1 << slot.width) - 1
            if slot.values is not None and number >= len(slot.values):
                raise ValueError(f"code {code}: {slot.name} {number} is no value's index (pack made no such code)")
            fields[slot.name] = number if slot.values is None else slot.values[number]
        return fields


SIGNATURE = Slots(
    Slot("collective", 2, COLLECTIVES),
    Slot("dtype", 4, SUPPORTED),
    Slot("op", 2, OPS),
    Slot("algorithm", 4, RUNNABLE),
    Slot("root", 19),  # a rank: broadcast roots up to 524287
    Slot("thread", 32),  # crc32 of the calling thread's name, which comm.handshake puts in
)
"""The handshake's fields, 63 bits in all."""
