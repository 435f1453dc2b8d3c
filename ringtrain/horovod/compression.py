"""Horovod's ``Compression``: ``none`` and ``fp16``, and every ringtrain compressor through ``from_spec``.

Horovod's shape is kept on the outside: a compressor has
``compress(tensor) -> (tensor, ctx)`` and ``decompress(tensor, ctx) -> tensor``,
and ``Compression.none`` / ``Compression.fp16`` are used as values:

    opt = hvd.DistributedOptimizer(opt, compression=hvd.Compression.fp16)
    opt = hvd.DistributedOptimizer(opt, compression=hvd.Compression.from_spec("ef+int8"))

Each is an object that also carries a ringtrain compression spec
(``ringtrain.compression.get``); that spec is what DistributedOptimizer hands to
its GradientReducer, which builds one compressor per bucket (per parameter
group of the reducer), so error-feedback residuals and PowerSGD's Q are kept
per bucket, in objects, as ringtrain's compressors keep them. ``fp16`` on the
reducer is ringtrain's fp16 ring codec: 16-bit values on every hop, summed in
float32 at each rank, where Horovod sums in float16.
"""
import torch

from ..compression import Compressor as RingtrainCompressor, get as compression_get, spec_of


class Compressor:
    """A Horovod-shaped compressor: ``compress`` returns the tensor to send and what ``decompress`` needs.

    ``spec`` is the ringtrain compression it stands for in DistributedOptimizer's
    reducer (None: uncompressed). Subclasses override ``compress`` and
    ``decompress``; the base class does neither.
    """

    spec: "str | RingtrainCompressor | None" = None

    def compress(self, tensor: torch.Tensor):
        raise NotImplementedError(f"{type(self).__name__}.compress")

    def decompress(self, tensor: torch.Tensor, ctx) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__}.decompress")

    def __repr__(self) -> str:
        return f"Compression({spec_of(self.spec)!r})"


class NoneCompressor(Compressor):
    """No compression: the tensor itself, no context.

    >>> t = torch.ones(2); Compression.none.decompress(*Compression.none.compress(t)) is t
    True
    """

    def compress(self, tensor):
        return tensor, None

    def decompress(self, tensor, ctx):
        return tensor


class FP16Compressor(Compressor):
    """Floating tensors travel as float16 and come back in their own dtype; other dtypes pass unchanged.

    >>> c, dtype = Compression.fp16.compress(torch.ones(2, dtype=torch.float64)); c.dtype
    torch.float16
    >>> Compression.fp16.decompress(c, dtype).dtype
    torch.float64
    """

    spec = "fp16"

    def compress(self, tensor):
        if tensor.dtype.is_floating_point:
            return tensor.type(torch.float16), tensor.dtype
        return tensor, tensor.dtype

    def decompress(self, tensor, ctx):
        return tensor if ctx is None or tensor.dtype == ctx else tensor.type(ctx)


class SpecCompressor(Compressor):
    """Any ringtrain compression (a spec string or a ringtrain Compressor object) for DistributedOptimizer.

    Its codec runs inside the reducer's allreduce, where payloads are summed or
    gathered; there is no tensor to hand back alone, so ``compress`` refuses,
    except for the 16-bit casts, which cast as ``Compression.fp16`` does.
    """

    def __init__(self, spec: "str | RingtrainCompressor"):
        compression_get(spec)  # a bad spec raises ValueError here, naming it
        self.spec = spec

    def compress(self, tensor):
        cast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(spec_of(self.spec))
        if cast is None:
            raise ValueError(f"Compression.from_spec({spec_of(self.spec)!r}) runs inside DistributedOptimizer's "
                             "reducer only; for a single tensor use Compression.none, Compression.fp16, "
                             "from_spec('fp16') or from_spec('bf16')")
        if tensor.dtype.is_floating_point:
            return tensor.type(cast), tensor.dtype
        return tensor, tensor.dtype

    def decompress(self, tensor, ctx):
        return tensor if ctx is None or tensor.dtype == ctx else tensor.type(ctx)


class Compression:
    """Horovod's compression choices: ``none``, ``fp16``, and ``from_spec(spec)`` for ringtrain's.

    >>> Compression.from_spec("powersgd:rank=4")
    Compression('powersgd:rank=4')
    """

    none = NoneCompressor()
    fp16 = FP16Compressor()

    @staticmethod
    def from_spec(spec: "str | RingtrainCompressor") -> SpecCompressor:
        """A compressor for any ringtrain spec ("ef+int8", "topk:ratio=0.01", "powersgd:rank=4", ...) or object.

        ValueError, naming the spec, if ringtrain cannot build it.
        """
        return SpecCompressor(spec)


def reducer_compression(compression) -> "str | RingtrainCompressor | None":
    """What GradientReducer's ``compression`` gets for DistributedOptimizer's ``compression`` argument.

    Horovod's values (``Compression.none``, ``.fp16``, ``from_spec(...)``), and
    for convenience a ringtrain spec string or Compressor object, or None.
    ValueError for anything else: a Horovod-style compressor class of one's own
    has no ringtrain codec to run inside the reducer.
    """
    if compression is None or isinstance(compression, (str, RingtrainCompressor)):
        compression_get(compression)
        return compression
    if isinstance(compression, Compressor):
        return compression.spec
    if isinstance(compression, type) and issubclass(compression, Compressor):
        return compression.spec  # a class, as Horovod's own are: its spec is a class attribute
    raise ValueError(f"compression={compression!r} is not allowed — hvd.Compression.none, hvd.Compression.fp16, "
                     "hvd.Compression.from_spec('<ringtrain spec>'), a ringtrain spec string or a "
                     "ringtrain.compression.Compressor")
