"""Machine-readable metrics (JSON lines) and the progress line, both from rank 0."""
import json
import os
import time


class Metrics:
    """Appends one JSON object per line to ``out_dir/metrics.jsonl`` on rank 0; a no-op elsewhere."""

    def __init__(self, out_dir: str, rank: int):
        self._file = None
        if rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            self.path = os.path.join(out_dir, "metrics.jsonl")
            self._file = open(self.path, "a", buffering=1)

    def write(self, **row) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"time": round(time.time(), 3), **row}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def progress_line(step: int, steps: int, loss: float, lr: float, per_s: float, comm_share: float | None,
                  exposed_share: float, step_s: float, *, wire_bytes: int | None = None, unit: str = "tokens",
                  epoch: float | None = None) -> str:
    """One line of progress, as rank 0 prints it.

    >>> progress_line(10, 100, 2.5, 1e-3, 5000, 0.3, 0.1, 0.2, wire_bytes=3_000_000, unit="samples", epoch=1.5)
    'step  10/100 | epoch 1.50 | loss 2.5000 | lr 1.00e-03 | 5,000 samples/s | 200 ms/step | comm 30% of step, 10% exposed | 3.0 MB sent'
    """
    short = {"tokens": "tok/s"}.get(unit, f"{unit}/s")
    return (f"step {step:>{len(str(steps))}}/{steps} | " + (f"epoch {epoch:.2f} | " if epoch is not None else "")
            + f"loss {loss:.4f} | lr {lr:.2e} | {per_s:,.0f} {short} | {step_s * 1e3:.0f} ms/step | "
            + (f"comm {100 * comm_share:.0f}% of step, " if comm_share is not None else "")
            + f"{100 * exposed_share:.0f}% exposed"
            + (f" | {wire_bytes / 1e6:.1f} MB sent" if wire_bytes is not None else ""))


def say(rank: int, text: str) -> None:
    if rank == 0:
        print(text, flush=True)
