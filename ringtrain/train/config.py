"""TrainConfig: every training option, validated, one field per command-line flag."""
from dataclasses import dataclass, fields


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 500
    """Optimizer steps to run."""
    batch_size: int = 8
    """Sequences per rank per micro-batch."""
    accumulate: int = 1
    """Micro-batches per optimizer step (gradients are averaged across ranks once per step)."""
    lr: float = 2e-3
    """Peak learning rate, reached after the warm-up."""
    min_lr_ratio: float = 0.1
    """The cosine decay ends at lr * min_lr_ratio."""
    warmup: int = 20
    """Linear warm-up steps."""
    optimizer: str = "adamw"
    """adamw or sgd."""
    momentum: float = 0.0
    """SGD momentum."""
    weight_decay: float = 0.1
    """Decoupled weight decay for matrices (not biases, norms)."""
    grad_clip: float = 1.0
    """Clip the averaged gradient to this global norm; 0 turns clipping off."""
    seed: int = 1337
    """Seeds the model's initialisation and the batches."""
    data: str | None = None
    """A text file or directory; default: this Python's standard-library sources."""
    model: str = "gpt"
    """gpt, or module:function returning (model, loss_fn) with loss_fn(model, x, y) -> loss."""
    layers: int = 4
    """GPT transformer blocks."""
    heads: int = 4
    """GPT attention heads."""
    width: int = 128
    """GPT embedding width."""
    context: int = 128
    """Sequence length in bytes."""
    compression: str = "none"
    """Gradient compression per bucket, e.g. fp16, int8+lz4, ef+topk:ratio=0.01, onebit, powersgd:rank=4;
    auto: chosen by a probe at start-up, and used only where it pays."""
    bucket_cap_mb: float | str = 25.0
    """Largest gradient bucket, in MB; auto: chosen by a probe at start-up."""
    eval_every: int = 100
    """Validation loss every this many steps (and at the end); 0: only at the end."""
    eval_windows: int = 64
    """Held-out windows in each validation (split over ranks)."""
    log_every: int = 10
    """Progress line every this many steps on rank 0."""
    sample_tokens: int = 200
    """Bytes of text generated at the end (GPT only); 0 for none."""
    out_dir: str = "runs/ringtrain"
    """Where metrics.jsonl goes (rank 0 writes it)."""
    checkpoint_dir: str | None = None
    """Directory for checkpoints (shared storage on a cluster); none are written without it."""
    checkpoint_every: str = "0"
    """Checkpoint every N steps ("100") or seconds ("600s"), and at the end; "0": only at the end."""
    keep_checkpoints: int = 3
    """How many complete checkpoints to keep."""
    resume: str = "auto"
    """auto: from the newest valid checkpoint in --checkpoint-dir if there is one; none; or a checkpoint path."""
    stop_after: int = 0
    """Stop after this many steps of this run, with a checkpoint and exit code 75; 0: run to --steps."""
    timeout: float = 15.0
    """Seconds a rank waits for its peers in a collective before it aborts the job (exit code 76)."""
    first_timeout: float = 300.0
    """The same deadline for start-up and the first step, which include loading data and imports."""

    def __post_init__(self):
        positive = ("steps", "batch_size", "accumulate", "layers", "heads", "width", "context", "eval_windows",
                    "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("warmup", "eval_every", "sample_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be adamw or sgd, got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"weight_decay and grad_clip must be >= 0, got {self.weight_decay!r}, {self.grad_clip!r}")
        if self.bucket_cap_mb != "auto" and not (isinstance(self.bucket_cap_mb, (int, float))
                                                 and self.bucket_cap_mb > 0):
            raise ValueError(f"bucket_cap_mb must be a number > 0 or auto, got {self.bucket_cap_mb!r}")
        if self.model != "gpt" and ":" not in self.model:
            raise ValueError(f"model must be gpt or module:function, got {self.model!r}")
        from ..compression import get as compression_get
        if self.compression != "auto":
            compression_get(self.compression)  # raises ValueError naming what is wrong
        if self.keep_checkpoints < 1 or self.stop_after < 0:
            raise ValueError(f"keep_checkpoints must be >= 1 and stop_after >= 0, got "
                             f"{self.keep_checkpoints!r}, {self.stop_after!r}")
        if not self.timeout > 0 or not self.first_timeout > 0:
            raise ValueError(f"timeout and first_timeout must be > 0, got {self.timeout!r}, {self.first_timeout!r}")
        self.checkpoint_interval()  # validates checkpoint_every
        if self.resume not in ("auto", "none") and not self.resume:
            raise ValueError("resume must be auto, none or a checkpoint path")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")


    def checkpoint_interval(self) -> tuple[int, float]:
        """(every N steps, every S seconds) from checkpoint_every; 0 means never."""
        text = str(self.checkpoint_every).strip()
        try:
            if text.endswith("s"):
                seconds = float(text[:-1])
                if seconds > 0:
                    return 0, seconds
            elif int(text) >= 0:
                return int(text), 0.0
        except ValueError:
            pass
        raise ValueError(f"checkpoint_every must be a number of steps (100) or seconds (600s), "
                         f"got {self.checkpoint_every!r}")


def field_docs() -> dict[str, str]:
    """Each field's docstring (the string literal after it), for --help."""
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(TrainConfig))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = after.value.value
    return docs


def add_arguments(parser) -> None:
    """One --flag per TrainConfig field, with its default and docstring."""
    docs = field_docs()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = {int: int, float: float}.get(f.type, str)  # str | None fields take strings
        if f.name == "bucket_cap_mb":
            kind = _number_or_auto
        parser.add_argument(flag, type=kind, default=f.default, dest=f.name,
                            help=f"{docs.get(f.name, '')} (default: {f.default})")


def _number_or_auto(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        import argparse
        raise argparse.ArgumentTypeError(f"a number of MB, or auto; got {text!r}") from None


def from_args(args) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
