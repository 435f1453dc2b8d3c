"""Tuned: what a run trains with where its config says auto, chosen once and kept by its checkpoints.

``--compression auto`` and ``--bucket-cap-mb auto`` are decided at start-up
(autotune.py), or read back from the checkpoint a run resumes (a resumed run
must not choose anew); a config without auto is its own choice. Checkpoints
store the record as a plain dict (``saved()``), as they always have, so
checkpoints written before it load (``from_saved``).

>>> t = Tuned(compression="ef+int8", bucket_cap_mb=5)
>>> t.saved()
{'compression': 'ef+int8', 'bucket_cap_mb': 5.0}
>>> Tuned.from_saved({'compression': 'none', 'bucket_cap_mb': 25.0, 'optimizer': 'onebit-adam'}).optimizer
'onebit-adam'
"""
import dataclasses
from dataclasses import dataclass, field

from ..compression import spec_of
from .config import TrainConfig


@dataclass(frozen=True, kw_only=True)
class Tuned:
    compression: object
    """The compression to run: a spec, or the Compressor object a config was given."""
    bucket_cap_mb: float
    """The bucket cap to run, in MB."""
    optimizer: str | None = None
    """The optimizer auto chose in place of the config's (1-bit Adam replaces AdamW); None: the config's."""
    probe: dict | None = field(default=None, compare=False)
    """What the autotuner measured and predicted (metrics.jsonl's start row); None if it did not run."""
    text: str | None = field(default=None, compare=False)
    """The line that says what was chosen and why; None where nothing was auto."""

    @property
    def compression_name(self) -> str:
        return spec_of(self.compression)

    def applied_to(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with what was given as auto replaced by what was chosen."""
        return dataclasses.replace(cfg, compression=self.compression, optimizer=self.optimizer or cfg.optimizer)

    def saved(self) -> dict:
        """The checkpoint's form (and ``train``'s result["tuned"]): plain values, the optimizer only if chosen."""
        return {"compression": self.compression_name, "bucket_cap_mb": float(self.bucket_cap_mb),
                **({"optimizer": self.optimizer} if self.optimizer else {})}

    @classmethod
    def from_saved(cls, saved: dict, text: str | None = None) -> "Tuned":
        """The record a checkpoint kept with ``saved()`` (the same dict since checkpoints first kept it)."""
        return cls(compression=saved["compression"], bucket_cap_mb=saved["bucket_cap_mb"],
                   optimizer=saved.get("optimizer"), text=text)
