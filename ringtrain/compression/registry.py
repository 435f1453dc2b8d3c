"""Compressors by name, for the command line and configs.

A spec is a chain of parts joined by ``+``, each ``name`` or ``name:key=value,key=value``:

    none | fp16 | bf16 | int8[:segment=512,stochastic=1,seed=0] | topk:ratio=0.01 (or k=1000)
    onebit[:chunk=1024] | powersgd[:rank=4,seed=0]        one of these, first or after ef
    dgc:ratio=0.001,momentum=0.9,warmup=100,clip=1,masking=1   top-k with DGC's corrections (dgc.py), alone
    lz4                                                     lossless, after the compressor (or alone)
    ef                                                      first: error feedback around the rest

Examples: ``"int8+lz4"``, ``"ef+topk:ratio=0.01+lz4"``, ``"powersgd:rank=4"``.
``onebit`` gets error feedback even without ``ef``: it does not converge without it.
``get`` returns a new compressor each call (each bucket keeps its own state), or
None for ``"none"``; given a Compressor object, it returns the object's ``fresh()`` copy.
``register`` adds a compressor class of your own under a name, usable in specs
and ``--compression`` from then on (ringtrain/examples/random_k.py).
"""
import re

from .base import Compressor
from .casts import Cast16
from .dgc import DGC
from .error_feedback import ErrorFeedback
from .int8 import Int8
from .lz4_frame import LZ4
from .onebit import OneBit
from .params import parse
from .powersgd import PowerSGD
from .topk import TopK

_BASE = {"fp16": lambda: Cast16("float16"), "bf16": lambda: Cast16("bfloat16"), "int8": Int8, "topk": TopK,
         "onebit": OneBit, "powersgd": PowerSGD, "dgc": DGC}
# The declared parameters of each name (fp16 and bf16 take none).
_PARAMS = {name: getattr(factory, "params", {}) for name, factory in _BASE.items()}
_BUILT_IN = frozenset(_BASE)
_WORDS = ("none", "lz4", "ef", "auto")  # the grammar's own words: never a compressor's name
NAMES = ("none", *_BASE, "lz4", "ef")
"""The built-in names; ``names()`` adds the registered ones."""


def names() -> tuple[str, ...]:
    """Every name a spec may use: the built-ins, then the registered compressors."""
    return ("none", *_BASE, "lz4", "ef")


def register(name: str, cls) -> None:
    """Make ``name`` in a spec (and ``--compression``) build ``cls``: a Compressor subclass whose ``params``
    (name -> ringtrain.checks.Rule) declare its keyword parameters. A built-in name cannot be taken; a
    registered one may be registered again (the last class wins, as when a script re-runs).

    >>> from ringtrain.examples.random_k import RandomK
    >>> "randomk" in names()
    True
    >>> get("ef+randomk:ratio=0.5").name
    'ef(randomk)'
    """
    if not isinstance(name, str) or re.fullmatch(r"[a-z][a-z0-9_]*", name) is None or name in _WORDS:
        raise ValueError(f"compression.register: name={name!r} is not allowed — lower-case letters, digits and _, "
                         f"starting with a letter, and not one of {', '.join(_WORDS)}")
    if not (isinstance(cls, type) and issubclass(cls, Compressor)):
        raise ValueError(f"compression.register({name!r}, {cls!r}): not allowed — a subclass of "
                         "ringtrain.compression.Compressor")
    if name in _BUILT_IN:
        raise ValueError(f"compression.register: {name!r} is a built-in compressor — choose another name")
    _BASE[name], _PARAMS[name] = cls, dict(getattr(cls, "params", {}))


def get(spec: "str | Compressor | None", **params) -> Compressor | None:
    """A fresh compressor for ``spec``; keyword ``params`` go to a single named compressor.

    >>> get("ef+topk:ratio=0.01+lz4").name
    'ef(topk+lz4)'
    >>> get("topk", ratio=0.05).name
    'topk'
    >>> from ringtrain.compression import ErrorFeedback, TopK
    >>> get(ErrorFeedback(TopK(0.01))).name     # an object: a copy with state of its own
    'ef(topk)'
    """
    if spec is None or spec == "none":
        if params:
            raise ValueError(f"compression none takes no parameters, got {sorted(params)}")
        return None
    if isinstance(spec, Compressor):
        if params:
            raise ValueError(f"compression {spec.name}: keyword parameters go with a spec string, not an object")
        return spec.fresh()
    if not isinstance(spec, str):
        raise ValueError(f"compression: expected a spec string such as 'int8+lz4' or a "
                         f"ringtrain.compression.Compressor, got {type(spec).__name__}")
    parts = [_parse(p, spec) for p in spec.split("+")]
    if params:
        if len(parts) != 1:
            raise ValueError(f"compression {spec!r}: keyword parameters need a single compressor name")
        parts[0][1].update(params)
    names = [name for name, _ in parts]
    feedback = names[0] == "ef"
    if feedback:
        _no_params(parts[0], spec)
        parts = parts[1:]
    if not parts:
        raise ValueError(f"compression {spec!r}: ef needs a compressor after it, e.g. ef+topk:ratio=0.01")
    base, lz4 = None, False
    for i, (name, kwargs) in enumerate(parts):
        if name == "lz4":
            _no_params((name, kwargs), spec)
            if lz4 or i != len(parts) - 1:
                raise ValueError(f"compression {spec!r}: lz4 may appear once, last")
            lz4 = True
        elif name == "ef":
            raise ValueError(f"compression {spec!r}: ef must come first")
        elif base is not None:
            raise ValueError(f"compression {spec!r}: one compressor per chain ({base.name} and {name})")
        else:
            base = _build(name, kwargs, spec)
    if isinstance(base, (PowerSGD, DGC)) and (lz4 or feedback):
        raise ValueError(f"compression {spec!r}: {base.name} has its own error feedback and wire format; use it "
                         "alone")
    compressor = base if base is not None else Compressor()
    if lz4:
        compressor = LZ4(compressor)
    if feedback or isinstance(base, OneBit):
        compressor = ErrorFeedback(compressor)
    return compressor


def spec_of(compression: "str | Compressor | None") -> str:
    """The compression as text, for logs, metrics and checkpoints: a spec as given, an object's name, "none".

    >>> spec_of("ef+int8"), spec_of(None), spec_of(TopK(k=3))
    ('ef+int8', 'none', 'topk')
    """
    if compression is None:
        return "none"
    return compression if isinstance(compression, str) else compression.name


def _parse(part: str, spec: str):
    name, _, args = part.strip().partition(":")
    if name not in names() or name == "none":
        raise ValueError(f"compression {spec!r}: unknown compressor {name!r}; known: {', '.join(names())}")
    kwargs = {}
    for item in filter(None, args.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"compression {spec!r}: write parameters as key=value, got {item!r}")
        key = key.strip()
        try:
            if key in kwargs:
                raise ValueError(f"{name} gets {key} twice")
            kwargs[key] = parse(name, _PARAMS.get(name, {}), key, value)
        except ValueError as e:
            raise ValueError(f"compression {spec!r}: {e}") from None
    return name, kwargs


def _no_params(part, spec):
    if part[1]:
        raise ValueError(f"compression {spec!r}: {part[0]} takes no parameters, got {sorted(part[1])}")


def _build(name: str, kwargs: dict, spec: str) -> Compressor:
    unknown = sorted(set(kwargs) - set(_PARAMS[name]))
    if unknown:
        takes = ", ".join(_PARAMS[name]) or "no parameters"
        raise ValueError(f"compression {spec!r}: {name} has no parameter {unknown[0]!r}; it takes {takes}")
    try:
        return _BASE[name](**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"compression {spec!r}: {e}") from None
