"""Byte sizes as people write them: 4, 64K, 256M, 1G (powers of 1024)."""

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_bytes(text: str) -> int:
    """Parse a byte size.

    >>> parse_bytes("256M"), parse_bytes("4"), parse_bytes("64KiB")
    (268435456, 4, 65536)
    """
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    number = t[: len(t) - len(unit)] if unit else t
    try:
        value = int(float(number) * _UNITS[unit])
    except ValueError:
        raise ValueError(f"{text!r} is not a byte size; write e.g. 4, 64K, 256M or 1G") from None
    if value < 0:
        raise ValueError(f"{text!r}: a byte size cannot be negative")
    return value


def format_bytes(n: int) -> str:
    """The shortest exact spelling of ``n`` bytes.

    >>> format_bytes(268435456), format_bytes(4), format_bytes(1536)
    ('256M', '4', '1536')
    """
    for unit in ("G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def sweep(min_bytes: int, max_bytes: int, factor: int, itemsize: int) -> list[int]:
    """Sizes from ``min_bytes`` to ``max_bytes`` multiplying by ``factor``, rounded to whole elements.

    >>> sweep(4, 64, 4, 4)
    [4, 16, 64]
    """
    if min_bytes < itemsize or max_bytes < min_bytes or factor < 2:
        raise ValueError(f"size sweep: need itemsize ({itemsize}) <= min_bytes ({min_bytes}) <= "
                         f"max_bytes ({max_bytes}) and factor ({factor}) >= 2")
    out, size = [], min_bytes
    while size <= max_bytes:
        out.append(size - size % itemsize)
        size *= factor
    return out
