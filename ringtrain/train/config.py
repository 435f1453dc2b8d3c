"""TrainConfig: every training option, validated, one field per command-line flag.

Each field has one type from Python to the run: ``broadcast_buffers`` is a
bool, ``node_aware`` a ``Switch`` ("auto", "on" or "off"), as GradientReducer
takes them; only the command line spells a bool as on/off (``add_arguments``).
The compression spec is parsed once per config (``compressor``), and the
rules for what goes with what are compression/compatibility.py's.
"""
import functools
import math
import typing
from dataclasses import dataclass, fields

from ..fault.errors import UsageError
from ..checks import Rule, Switch, boolean, choice, either, number, optional, switch, text, whole
from ..constants import BUCKET_CAP_MB

ADAM_BETAS = (0.9, 0.95)  # AdamW's, for every AdamW-based optimizer here
ADAM_BETA1 = ADAM_BETAS[0]

if typing.TYPE_CHECKING:
    from ..compression import Compressor


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
    compression: "str | Compressor" = "none"
    """Gradient compression per bucket, e.g. fp16, int8+lz4, ef+topk:ratio=0.01, onebit, powersgd:rank=4;
    auto: chosen by a probe at start-up, and used only where it pays. In Python also a Compressor object
    (each bucket gets its fresh() copy)."""
    bucket_cap_mb: float | str = BUCKET_CAP_MB
    """Largest gradient bucket, in MB; auto: chosen by a probe at start-up."""
    zero: int = 0
    """ZeRO stage: 0 replicates the optimizer state; 1 shards it across ranks; 2 shards the gradients too;
    3 shards the parameters as well (torch's FSDP2 over the ringtrain backend, one group per GPT block)."""
    param_dtype: str = "fp32"
    """--zero 3: the dtype the gathered parameters compute in (fp32, bf16 or fp16); the shards stay fp32."""
    reduce_dtype: str = "fp32"
    """--zero 3: the dtype gradients are reduce-scattered in (fp32, bf16 or fp16)."""
    pipeline_stages: int = 1
    """Pipeline ranks P: the GPT's blocks cut into P stages (torch.distributed.pipelining over the ringtrain
    backend); the world is P x D data-parallel replicas. 1: no pipeline."""
    micro_batches: int = 1
    """--pipeline-stages: micro-batches each --batch-size is cut into (must divide it)."""
    schedule: str = "1f1b"
    """--pipeline-stages: gpipe, 1f1b, or interleaved (1F1B over --stages-per-rank stages per rank)."""
    stages_per_rank: int = 1
    """--schedule interleaved: stages V per pipeline rank (P x V stages in all)."""
    stage_layers: str = ""
    """--pipeline-stages: blocks per stage, e.g. 3,3,2; empty: balanced by parameter count."""
    broadcast_buffers: bool = True
    """on: rank 0's buffers (BatchNorm statistics) overwrite every rank's after each step's averaging; off."""
    node_aware: Switch = "auto"
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
    memory_check: bool = True
    """on: estimate each rank's peak memory before any work and refuse a run that will not fit the node; off."""
    elastic: bool = False
    """on: when a rank dies, the survivors shrink the job and go on from the last step, in the same processes
    (needs Open MPI started with --with-ft ulfm); off: a dead rank stops the job (exit code 76)."""
    min_ranks: int = 1
    """--elastic: fewer survivors than this stop the job, with a checkpoint of the last step (exit code 76)."""
    shard_recovery: str = "copy"
    """--elastic --zero 1/2, where the survivors find a dead rank's optimizer shard: copy (each rank's shard is
    also kept on the next rank, sent at every step; they lose only the failed step) or checkpoint (nothing sent;
    they go back to the newest checkpoint, resharded, and redo the steps since)."""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not CHECKS[f.name].allows(value):
                raise refused(f.name, value, CHECKS[f.name].allowed)
        if self.width % self.heads:
            raise refused("width", self.width, f"a multiple of heads ({self.heads})")
        self._check_compatible()
        self.checkpoint_interval()

    @functools.cached_property
    def compressor(self) -> "Compressor | None":
        """The compression, parsed once (a prototype: nothing runs it); None for none, and for auto until chosen."""
        from ..compression import Compressor, get as compression_get
        if isinstance(self.compression, Compressor):
            return self.compression
        if self.compression == "auto":
            return None
        try:
            return compression_get(self.compression)
        except ValueError as e:  # it names the part that is wrong and what is allowed
            raise UsageError(f"compression (--compression): {e}") from None

    @property
    def compression_name(self) -> str:
        """The compression as text: the spec, or a Compressor object's name (metrics, checkpoints)."""
        from ..compression import spec_of
        return spec_of(self.compression)

    def _check_compatible(self) -> None:
        """compression/compatibility.py's rules on this config, each refused with the flags it names."""
        from ..compression import compatibility as rules
        parsed = rules.AUTO if self.compression == "auto" else self.compressor
        given = f"compression (--compression) = {self.compression_name!r}"
        if self.optimizer == "onebit-adam":
            reason = rules.onebit_adam_conflict(self.zero, parsed)
            if reason:
                raise UsageError(f"optimizer (--optimizer) = 'onebit-adam' with --zero {self.zero} and --compression "
                                 f"{self.compression_name}: not supported — {reason}")
        reason = rules.dgc_conflict(parsed, self.optimizer, self.momentum, ADAM_BETA1)
        if reason:
            raise UsageError(f"{given} with --optimizer {self.optimizer} --momentum {self.momentum:g}: {reason}")
        reason = rules.zero_conflict(self.zero, parsed)
        if reason:
            raise UsageError(f"{given} with --zero {self.zero}: not supported yet — {reason}; or use --zero 0")
        reason = pipeline_conflict(self)
        if reason:
            raise UsageError(reason)
        if self.elastic and (self.zero == 3 or self.pipeline_stages > 1):
            raise UsageError(f"--elastic with --zero {self.zero} --pipeline-stages {self.pipeline_stages}: not "
                             "supported yet — a dead rank's shard of the model would be lost; use --zero 0, 1 or 2 "
                             "and no pipeline, or leave --elastic out")
        if self.shard_recovery != "copy" and not (self.elastic and self.zero in (1, 2)):
            raise UsageError(f"--shard-recovery {self.shard_recovery} without --elastic --zero 1 or 2: it says where "
                             "the survivors of a death find its optimizer shard; add them, or leave it out")
        if self.shard_recovery == "checkpoint" and not self.checkpoint_dir:
            raise UsageError("--shard-recovery checkpoint without --checkpoint-dir: the survivors go back to the "
                             "newest checkpoint, so there must be one; give --checkpoint-dir, or --shard-recovery copy")
        if self.elastic and (self.optimizer == "onebit-adam" or self.dgc_adam):
            # Their momentum is averaged inside optimizer.step, after the step's commit: a death there would
            # leave some survivors a step ahead of the others.
            what = "--optimizer onebit-adam" if self.optimizer == "onebit-adam" else "--compression dgc under AdamW"
            raise UsageError(f"--elastic with {what}: not supported — its optimizer step averages over the ranks "
                             "after the step is committed, so a death there would split the survivors; use another "
                             "compression, or leave --elastic out")
        if self.min_ranks > 1 and not self.elastic:
            raise UsageError(f"--min-ranks {self.min_ranks} without --elastic: it is the floor an elastic job shrinks "
                             "to; add --elastic, or leave --min-ranks out")
        reason = rules.precision_conflict(self.zero, self.param_dtype, self.reduce_dtype)
        if reason:
            raise UsageError(f"--param-dtype {self.param_dtype} --reduce-dtype {self.reduce_dtype} with --zero "
                             f"{self.zero}: {reason}")

    @property
    def dgc_adam(self) -> bool:
        """AdamW with dgc at momentum beta1: DGC on Adam's momentum over a frozen variance (optim/dgc_adam.py)."""
        from ..compression.compatibility import dgc_adam
        return dgc_adam(self.compressor, self.optimizer, ADAM_BETA1)

    def checkpoint_interval(self) -> tuple[int, float]:
        """(every N steps, every S seconds) from checkpoint_every; 0 means never."""
        text = str(self.checkpoint_every).strip()
        if text.endswith("s"):
            seconds = float(text[:-1])
            if math.isfinite(seconds) and seconds > 0:
                return 0, seconds
            raise refused("checkpoint_every", self.checkpoint_every, CHECKS["checkpoint_every"].allowed)
        return int(text), 0.0


def pipeline_conflict(cfg: TrainConfig) -> str | None:
    """What the pipeline options cannot honour together, as one line naming the flags; None if all is well."""
    flags = (f"--pipeline-stages {cfg.pipeline_stages} --micro-batches {cfg.micro_batches} --schedule {cfg.schedule} "
             f"--stages-per-rank {cfg.stages_per_rank}")
    if cfg.pipeline_stages == 1:
        given = [f for f, on in (("--micro-batches", cfg.micro_batches != 1), ("--stages-per-rank",
                 cfg.stages_per_rank != 1), ("--stage-layers", bool(cfg.stage_layers)),
                 ("--schedule", cfg.schedule != "1f1b")) if on]
        return (f"{', '.join(given)} without --pipeline-stages: they shape a pipeline; give --pipeline-stages P > 1, "
                "or leave them out") if given else None
    if cfg.batch_size % cfg.micro_batches:
        return f"{flags}: --micro-batches must divide --batch-size {cfg.batch_size} (each replica's batch is cut)"
    if (cfg.schedule == "interleaved") != (cfg.stages_per_rank > 1):
        return (f"{flags}: interleaved runs several stages per rank (--stages-per-rank 2 or more), gpipe and 1f1b "
                "one")
    if cfg.zero or cfg.compression != "none" or cfg.optimizer == "onebit-adam":
        return (f"{flags} with --zero {cfg.zero} --compression {cfg.compression_name} --optimizer {cfg.optimizer}: "
                "not supported yet — a pipeline's stages average their gradients uncompressed and unsharded; "
                "use --zero 0, --compression none and adamw or sgd")
    return None


def refused(name: str, value, allowed: str) -> UsageError:
    """The error for a field's bad value, naming the field, its flag, the value and what is allowed."""
    return UsageError(f"{name} (--{name.replace('_', '-')}) = {value!r}: not allowed — {allowed}")


def _is_compressor(value) -> bool:
    from ..compression import Compressor
    return isinstance(value, Compressor)


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
    "compression": either(text("a compression spec such as fp16, int8+lz4, ef+topk:ratio=0.01 or powersgd:rank=4; "
                               "none; auto", r"\S+"),
                          Rule("a ringtrain.compression.Compressor object", _is_compressor)),
    "bucket_cap_mb": either(number(0, above=True), choice("auto")), "node_aware": switch(),
    "broadcast_buffers": boolean(), "zero": whole(0, 3),
    "pipeline_stages": whole(1), "micro_batches": whole(1), "schedule": choice("gpipe", "1f1b", "interleaved"),
    "stages_per_rank": whole(1),
    "stage_layers": text("blocks per stage, comma-separated, e.g. 3,3,2; or empty (balanced)", r"(\d+(,\d+)*)?"),
    "param_dtype": choice("fp32", "bf16", "fp16"), "reduce_dtype": choice("fp32", "bf16", "fp16"),
    "eval_every": whole(0), "eval_windows": whole(1), "log_every": whole(1), "sample_tokens": whole(0),
    "out_dir": _PATH, "checkpoint_dir": optional(_PATH),
    "checkpoint_every": either(whole(0), text("a number of steps (100; 0: only at the end) or of seconds (600s)",
                                              r"\s*(\d+|(\d+\.?\d*|\.\d+)s)\s*")),
    "keep_checkpoints": whole(1), "resume": text("auto, none, or the path of a checkpoint"),
    "stop_after": whole(0), "timeout": number(0, above=True), "first_timeout": number(0, above=True),
    "trace": optional(_PATH), "memory_check": boolean(), "elastic": boolean(), "min_ranks": whole(1),
    "shard_recovery": choice("copy", "checkpoint"),
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
        kind = {int: int, float: float, bool: on_off}.get(f.type, str)  # str | None fields take strings
        options = {}
        if f.name == "bucket_cap_mb":
            kind = _number_or_auto
        if f.type == Switch:
            options["choices"] = typing.get_args(Switch)
        if f.type is bool:  # --elastic alone means on, as a switch reads; --elastic off still works
            options.update(metavar="{on,off}", nargs="?", const=True)
        shown = {True: "on", False: "off"}.get(f.default, f.default) if f.type is bool else f.default
        parser.add_argument(flag, type=kind, default=f.default, dest=f.name, **options,
                            help=f"{docs.get(f.name, '')} (default: {shown})")


def on_off(text: str) -> bool:
    """The command line's on/off as the bool a TrainConfig field holds."""
    if text not in ("on", "off"):
        import argparse
        raise argparse.ArgumentTypeError(f"on or off; got {text!r}")
    return text == "on"


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
