"""TrainConfig: every training option, validated, one field per command-line flag."""
import math
from dataclasses import dataclass, fields

from ..fault.errors import UsageError
from ..checks import Rule, choice, either, number, optional, text, whole
from ..constants import BUCKET_CAP_MB

ADAM_BETAS = (0.9, 0.95)  # AdamW's, for every AdamW-based optimizer here
ADAM_BETA1 = ADAM_BETAS[0]


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
    """adamw, sgd, or onebit-adam (AdamW for --onebit-warmup steps, then a frozen variance and the momentum
    averaged as signs with error feedback: about 1/32 of the bytes)."""
    onebit_warmup: int = 100
    """onebit-adam, and dgc at momentum 0.9 under AdamW: steps of plain AdamW before the variance is frozen and
    the momentum compressed."""
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
    data_changed: str = "refuse"
    """On resume, data whose fingerprint differs from the checkpoint's: refuse (one line naming the file and
    what changed), or ok (train on it anyway)."""
    model: str = "gpt"
    """gpt, or module:function returning a ringtrain.Task (model, loss, datasets, metrics), or a
    (model, loss_fn) pair with loss_fn(model, x, y) -> loss trained on --data's byte tokens."""
    epochs: int = 0
    """A dataset task: train this many epochs (this sets --steps); 0: --steps decides."""
    last_batch: str = "pad"
    """A dataset task's short last global batch of an epoch: pad (with the epoch's first samples) or drop."""
    loader_workers: int = 0
    """A dataset task: DataLoader worker processes per rank; 0: one background thread."""
    prefetch: int = 2
    """Batches each loader worker keeps ready."""
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
    bucket_cap_mb: float | str = BUCKET_CAP_MB
    """Largest gradient bucket, in MB; auto: chosen by a probe at start-up."""
    zero: int = 0
    """ZeRO stage: 0 replicates the optimizer state; 1 shards it across ranks; 2 shards the gradients too."""
    broadcast_buffers: str = "on"
    """on: rank 0's buffers (BatchNorm statistics) overwrite every rank's after each step's averaging; off."""
    node_aware: str = "auto"
    """auto: where the ranks span several nodes with several ranks on some node, average node-aware and
    compress only what crosses nodes; on: always; off: the flat ring, compressing every hop."""
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
    trace: str | None = None
    """Write a timeline of every rank (Chrome Trace Event Format, for ui.perfetto.dev) to this file."""
    memory_check: str = "on"
    """on: estimate each rank's peak memory before any work and refuse a run that will not fit the node; off."""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not CHECKS[f.name].allows(value):
                raise refused(f.name, value, CHECKS[f.name].allowed)
        if self.width % self.heads:
            raise refused("width", self.width, f"a multiple of heads ({self.heads})")
        if self.compression != "auto":
            from ..compression import get as compression_get
            try:
                compression_get(self.compression)
            except ValueError as e:  # it names the part that is wrong and what is allowed
                raise UsageError(f"compression (--compression): {e}") from None
        if self.optimizer == "onebit-adam" and (self.zero or self.compression != "none"):
            raise UsageError(f"optimizer (--optimizer) = 'onebit-adam' with --zero {self.zero} and --compression "
                             f"{self.compression}: not supported — 1-bit Adam compresses its own momentum; use "
                             "--zero 0 and --compression none with it")
        self._check_dgc()
        if self.zero and self.compression != "none" and not _zero_compatible(self.compression):
            raise UsageError(f"compression (--compression) = {self.compression!r} with --zero {self.zero}: not "
                             "supported yet — ZeRO reduce-scatters, so only codecs that sum on the ring work: "
                             "fp16, bf16, int8 (no ef, no lz4); or use --zero 0")
        self.checkpoint_interval()

    def _check_dgc(self) -> None:
        """DGC's momentum replaces the optimizer's: SGD must then have none; under AdamW it is Adam's beta1."""
        if not self.compression.startswith("dgc"):
            return
        from ..compression import get as compression_get
        momentum = compression_get(self.compression).momentum
        if not momentum or self.dgc_adam or (self.optimizer == "sgd" and not self.momentum):
            return
        raise UsageError(f"compression (--compression) = {self.compression!r} with --optimizer "
                         f"{self.optimizer} --momentum {self.momentum:g}: dgc's momentum correction takes the "
                         "optimizer's momentum — use --optimizer sgd --momentum 0 with it; under AdamW give dgc "
                         f"momentum={ADAM_BETA1:g} (Adam's beta1: the variance freezes after --onebit-warmup steps) "
                         "or momentum=0")

    @property
    def dgc_adam(self) -> bool:
        """AdamW with dgc at momentum beta1: DGC on Adam's momentum over a frozen variance (optim/dgc_adam.py)."""
        if self.optimizer != "adamw" or not self.compression.startswith("dgc"):
            return False
        from ..compression import get as compression_get
        return compression_get(self.compression).momentum == ADAM_BETA1

    def checkpoint_interval(self) -> tuple[int, float]:
        """(every N steps, every S seconds) from checkpoint_every; 0 means never."""
        text = str(self.checkpoint_every).strip()
        if text.endswith("s"):
            seconds = float(text[:-1])
            if math.isfinite(seconds) and seconds > 0:
                return 0, seconds
            raise refused("checkpoint_every", self.checkpoint_every, CHECKS["checkpoint_every"].allowed)
        return int(text), 0.0


def _zero_compatible(spec: str) -> bool:
    if spec == "auto":
        return False
    from ..compression import get as compression_get
    from ..optim.zero.shards import zero_compatible
    return zero_compatible(compression_get(spec))


def refused(name: str, value, allowed: str) -> UsageError:
    """The error for a field's bad value, naming the field, its flag, the value and what is allowed."""
    return UsageError(f"{name} (--{name.replace('_', '-')}) = {value!r}: not allowed — {allowed}")


_PATH = text("a non-empty path")
# One rule per field; __post_init__ looks every field up here, so a field
# added without a rule fails at once (KeyError) rather than going unchecked.
CHECKS: dict[str, Rule] = {
    "steps": whole(1), "batch_size": whole(1), "accumulate": whole(1),
    "lr": number(0, above=True), "min_lr_ratio": number(0, 1), "warmup": whole(0),
    "optimizer": choice("adamw", "sgd", "onebit-adam"), "onebit_warmup": whole(1),
    "momentum": number(0, 1, below=True), "weight_decay": number(0),
    "grad_clip": number(0), "seed": whole(0, 2**63 - 1), "data": optional(_PATH),
    "data_changed": choice("refuse", "ok"),
    "model": text("gpt, or module:function (a function that returns a ringtrain.Task or (model, loss_fn))",
                  r"gpt|[A-Za-z_][\w.]*:[A-Za-z_]\w*"),
    "epochs": whole(0), "last_batch": choice("pad", "drop"), "loader_workers": whole(0), "prefetch": whole(1),
    "layers": whole(1), "heads": whole(1), "width": whole(1), "context": whole(1),
    "compression": text("a compression spec such as fp16, int8+lz4, ef+topk:ratio=0.01 or powersgd:rank=4; "
                        "none; or auto", r"\S+"),
    "bucket_cap_mb": either(number(0, above=True), choice("auto")), "node_aware": choice("auto", "on", "off"),
    "broadcast_buffers": choice("on", "off"), "zero": whole(0, 2),
    "eval_every": whole(0), "eval_windows": whole(1), "log_every": whole(1), "sample_tokens": whole(0),
    "out_dir": _PATH, "checkpoint_dir": optional(_PATH),
    "checkpoint_every": either(whole(0), text("a number of steps (100; 0: only at the end) or of seconds (600s)",
                                              r"\s*(\d+|(\d+\.?\d*|\.\d+)s)\s*")),
    "keep_checkpoints": whole(1), "resume": text("auto, none, or the path of a checkpoint"),
    "stop_after": whole(0), "timeout": number(0, above=True), "first_timeout": number(0, above=True),
    "trace": optional(_PATH), "memory_check": choice("on", "off"),
}


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
