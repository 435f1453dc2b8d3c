"""Rules for values from users: what a config field or a compressor parameter allows.

A rule is a predicate, the sentence that says what is allowed, and a strict
parser for the value written as text (``key=value`` in a compression spec).
NaN fails every comparison, so the number rules test ``math.isfinite`` first
(``x < 0`` alone lets NaN through); ``True`` is not taken for the number 1,
``2.5`` is not a whole number, and a flag is 1, 0, true or false, nothing else.

>>> whole(1).allows(3), whole(1).allows(0), number(0).allows(float("nan"))
(True, False, False)
"""
import math
import re
from dataclasses import dataclass
from typing import Callable, Literal, get_args

Switch = Literal["auto", "on", "off"]
"""An option that is on, off, or left to the code to decide (``GradientReducer(node_aware=...)``)."""


@dataclass(frozen=True)
class Rule:
    allowed: str
    """What the value may be, as said to the user."""
    test: Callable[[object], bool]
    parse: Callable[[str], object] = str
    """Text to value; raises ValueError on text of the wrong kind."""

    def allows(self, value) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False

    def value_of(self, text: str):
        """The value ``text`` stands for, if this rule allows it; raises ValueError otherwise."""
        value = self.parse(text.strip())
        if not self.allows(value):
            raise ValueError(text)
        return value


def _parse_whole(text: str) -> int:
    if re.fullmatch(r"[+-]?\d+", text) is None:
        raise ValueError(text)
    return int(text)


def _parse_flag(text: str) -> bool:
    flags = {"1": True, "true": True, "0": False, "false": False}
    if text.lower() not in flags:
        raise ValueError(text)
    return flags[text.lower()]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def whole(lo: int, hi: int | None = None) -> Rule:
    """A whole number in [lo, hi] (no upper bound without hi)."""
    said = f"a whole number >= {lo}" if hi is None else f"a whole number from {lo} to {hi}"
    return Rule(said, lambda v: _is_whole(v) and v >= lo and (hi is None or v <= hi), _parse_whole)


def number(lo: float, hi: float | None = None, *, above: bool = False, below: bool = False) -> Rule:
    """A finite number >= lo (> lo with ``above``), and <= hi (< hi with ``below``) if hi is given."""
    said = f"a finite number {'>' if above else '>='} {lo:g}"
    if hi is not None:
        said += f" and {'<' if below else '<='} {hi:g}"
    return Rule(said, lambda v: _is_number(v) and (v > lo if above else v >= lo)
                and (hi is None or (v < hi if below else v <= hi)), float)


def multiple(of: int, lo: int) -> Rule:
    """A whole number >= lo that is a multiple of ``of``."""
    return Rule(f"a multiple of {of}, at least {lo}", lambda v: _is_whole(v) and v >= lo and v % of == 0,
                _parse_whole)


def flag() -> Rule:
    """True or False (as text: 1, 0, true, false)."""
    return Rule("1, 0, true or false", lambda v: isinstance(v, bool), _parse_flag)


def boolean() -> Rule:
    """True or False, nothing else (on or off on the command line, which maps them)."""
    return Rule("True or False (on or off on the command line)", lambda v: isinstance(v, bool))


def switch() -> Rule:
    """One of ``Switch``'s values: auto, on or off."""
    return choice(*get_args(Switch))


def choice(*options: str) -> Rule:
    return Rule(f"one of {', '.join(options)}", lambda v: isinstance(v, str) and v in options)


def text(said: str, pattern: str = r".+") -> Rule:
    """A string matching ``pattern`` in full."""
    return Rule(said, lambda v: isinstance(v, str) and re.fullmatch(pattern, v, re.S) is not None)


def optional(rule: Rule) -> Rule:
    return Rule(f"{rule.allowed}, or none", lambda v: v is None or rule.test(v))


def either(first: Rule, second: Rule) -> Rule:
    return Rule(f"{first.allowed}, or {second.allowed}", lambda v: first.allows(v) or second.allows(v))


def argument(rule: Rule):
    """An argparse ``type=`` that parses by ``rule``; argparse then names the flag in its error.

    >>> argument(number(0, above=True))("0.5")
    0.5
    """
    import argparse

    def convert(text: str):
        try:
            return rule.value_of(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed — {rule.allowed}") from None
    return convert


def whole_list(lo: int) -> Rule:
    """Comma-separated whole numbers >= lo, e.g. ``2,4,8``."""
    def parse(text: str) -> list[int]:
        return [_parse_whole(part.strip()) for part in text.split(",")]
    return Rule(f"comma-separated whole numbers >= {lo}, e.g. 2,4,8",
                lambda v: isinstance(v, list) and bool(v) and all(_is_whole(n) and n >= lo for n in v), parse)
