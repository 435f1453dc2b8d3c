"""``plan --calibrate``: the compute-side coefficients timed on this machine, single-process, in seconds.

The packaged cost model's gammas were fitted where 4 ranks shared 2 cores, and
they dominate a plan's prediction wherever the link is fast. A user's machine
is not that one. Here, on one thread (a rank's share of a core):

- each compressor's gamma: its compressed mean (``allreduce_mean``, the path
  the reducer takes: the ring codec for fp16/bf16/int8, compress and
  decompress for the gathered ones, PowerSGD's algebra with square-ish
  layers) of a gradient-sized float32 buffer of normal values on a
  communicator of one rank, so no byte moves, per input byte;
- gamma_none: the reducer's own work per byte, a gradient copied into its
  bucket and divided by the world size.

Each is the median of a few repetitions after one warm-up.
"""
import numpy as np
import torch

from .costmodel import ONEBIT_ADAM

CALIBRATION_BYTES = 4 << 20
REPEAT = 3


def calibrate(model, nbytes: int = CALIBRATION_BYTES, repeat: int = REPEAT) -> None:
    """Replace the model's gammas with this machine's, and record where they came from."""
    from mpi4py import MPI

    from ..timing import median_seconds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
        for spec, c in model.compressors.items():
            c.gamma = median_seconds(averaging(spec, _layers(x.size), x, MPI.COMM_SELF), repeat) / nbytes
            model.origin[f"gamma {spec}"] = f"calibrated here: {_rate(c.gamma)} through the codec"
        grad, bucket = torch.from_numpy(x), torch.empty(x.size)
        model.gamma_none = median_seconds(lambda: bucket.copy_(grad).div_(4), repeat) / nbytes
        model.origin["gamma_none"] = f"calibrated here: {_rate(model.gamma_none)} copy into a bucket and divide"
        model.origin.pop("gamma", None)
    finally:
        torch.set_num_threads(threads)


def averaging(spec: str, layout: list, x: np.ndarray, comm):
    """A call that averages ``x`` over ``comm`` the way ``spec`` would in training (``layout``: its parameters)."""
    if spec == ONEBIT_ADAM:  # the momentum's two-stage sign allreduce, after the warm-up
        from ..compression.onebit_allreduce import OneBitAllreduce
        state, buffer = OneBitAllreduce(x.size, comm), x.copy()
        return lambda: state.mean(buffer)
    from ..compression import get as compression_get
    compressor = compression_get(spec)
    compressor.set_layout(layout)
    return lambda: compressor.allreduce_mean(x, comm)


def _layers(count: int) -> list:
    """Square layers of 512 x 512 (and one remainder vector), as a transformer's weights are."""
    side, out, at = 512, [], 0
    while at + side * side <= count:
        out.append((at, at + side * side, (side, side)))
        at += side * side
    if at < count:
        out.append((at, count, (count - at,)))
    return out


def _rate(seconds_per_byte: float) -> str:
    return f"{1e-9 / seconds_per_byte:.2f} GB/s" if seconds_per_byte > 0 else "free"
