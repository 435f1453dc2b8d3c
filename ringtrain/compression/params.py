"""Typed compressor parameters: each compressor declares its rules, and values are checked once, here.

``Int8.params = {"segment": whole(1), "stochastic": flag(), ...}``. A spec's
text (``int8:stochastic=no``) is parsed strictly by the rule, and a keyword
value (``Int8(segment=0)``) is checked by the same rule, so ``rank=2.5`` or
``stochastic=no`` is refused with what is allowed instead of being coerced.
"""
from ..checks import Rule


def require(codec: str, rules: dict[str, Rule], **values) -> None:
    """Raise ValueError naming the first value that its rule refuses.

    >>> from ..checks import whole
    >>> require("int8", {"segment": whole(1)}, segment=2.5)
    Traceback (most recent call last):
    ...
    ValueError: int8: segment=2.5 is not allowed — a whole number >= 1
    """
    for key, value in values.items():
        if value is not None and not rules[key].allows(value):
            raise ValueError(f"{codec}: {key}={value!r} is not allowed — {rules[key].allowed}")


def parse(codec: str, rules: dict[str, Rule], key: str, text: str):
    """The value of ``key=text`` in a spec, by ``codec``'s rules; ValueError if unknown or not allowed."""
    if key not in rules:
        takes = ", ".join(rules) or "no parameters"
        raise ValueError(f"{codec} has no parameter {key!r}; it takes {takes}")
    try:
        return rules[key].value_of(text)
    except ValueError:
        raise ValueError(f"{codec}: {key}={text} is not allowed — {rules[key].allowed}") from None
