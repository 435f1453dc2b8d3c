"""Which compressions go with which other settings: each rule written once, here.

TrainConfig (train/config.py) checks a whole configuration with these before
any work, and each class checks its own arguments with the same functions
(GradientReducer for ZeRO, OneBitAdam, DGCAdam), so the two cannot drift. A
rule returns None when the settings go together, else the reason they do
not, and each caller puts it after its own naming of the arguments (a
``--flag`` on the command line, ``keyword=value`` in Python).

``compression`` here is a parsed compressor (``registry.get``), None for none,
or ``AUTO`` for the autotuner's choice, which is not known yet.

>>> from ringtrain.compression import get
>>> zero_conflict(1, get("fp16")) is None, zero_conflict(1, get("ef+int8"))[:21]
(True, 'ZeRO reduce-scatters,')
"""
from .base import Compressor, Path
from .dgc import DGC

AUTO = "auto"


def zero_conflict(zero: int, compression: "Compressor | str | None") -> str | None:
    """ZeRO reduce-scatters each bucket: only a codec that is summed on the ring (Path.RING_CODEC) fits.
    ZeRO-3's reduce-scatters are FSDP2's, which take no codec: its --reduce-dtype is the compression."""
    if not zero or compression is None:
        return None
    if zero == 3:
        return ("ZeRO-3's gradients are reduce-scattered by FSDP2, which takes no compressor; "
                "--reduce-dtype bf16 or fp16 halves its bytes")
    if compression != AUTO and compression.path is Path.RING_CODEC:
        return None
    return ("ZeRO reduce-scatters, so only codecs that sum on the ring work: fp16, bf16, int8 (no ef, no lz4)"
            + ("; auto may choose another" if compression == AUTO else ""))


def precision_conflict(zero: int, param_dtype: str, reduce_dtype: str) -> str | None:
    """Mixed precision is FSDP2's: --param-dtype and --reduce-dtype mean something only under ZeRO-3."""
    if zero == 3 or (param_dtype, reduce_dtype) == ("fp32", "fp32"):
        return None
    return "mixed precision is ZeRO-3's (FSDP2's MixedPrecisionPolicy); use --zero 3, or fp32 for both"


def onebit_adam_conflict(zero: int, compression: "Compressor | str | None") -> str | None:
    """1-bit Adam compresses its own momentum and averages it itself: no reducer compression, no ZeRO."""
    if not zero and compression is None:
        return None
    return "1-bit Adam compresses its own momentum; use it with zero=0 and no compression"


def dgc_conflict(compression: "Compressor | str | None", optimizer: str, momentum: float,
                 beta1: float) -> str | None:
    """DGC's momentum correction takes the optimizer's momentum: SGD must then have none, and under AdamW it
    must be Adam's ``beta1`` (DGC on Adam's momentum over a frozen variance, DGCAdam) or 0 (plain top-k)."""
    if not isinstance(compression, DGC) or not compression.momentum:
        return None
    if optimizer == "adamw" and compression.momentum == beta1:
        return None
    if optimizer == "sgd" and not momentum:
        return None
    return (f"dgc's momentum correction takes the optimizer's momentum — use --optimizer sgd --momentum 0 with "
            f"it; under AdamW give dgc momentum={beta1:g} (Adam's beta1: the variance freezes after "
            "--onebit-warmup steps) or momentum=0")


def dgc_adam(compression: "Compressor | str | None", optimizer: str, beta1: float) -> bool:
    """True if DGC runs on Adam's momentum (DGCAdam): AdamW, and dgc with momentum ``beta1``."""
    return optimizer == "adamw" and isinstance(compression, DGC) and compression.momentum == beta1
