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


def progress_line(step: int, steps: int, loss: float, lr: float, tokens_per_s: float,
                  comm_share: float, exposed_share: float, step_s: float) -> str:
    """One line of progress, as rank 0 prints it."""
    return (f"step {step:>{len(str(steps))}}/{steps} | loss {loss:.4f} | lr {lr:.2e} | "
            f"{tokens_per_s:,.0f} tok/s | {step_s * 1e3:.0f} ms/step | "
            f"comm {100 * comm_share:.0f}% of step, {100 * exposed_share:.0f}% exposed")


def say(rank: int, text: str) -> None:
    if rank == 0:
        print(text, flush=True)
