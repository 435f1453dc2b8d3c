"""The task a run trains: the built-in GPT on the byte corpus, or whatever module:function returns."""
import importlib

import torch

from ..fault.errors import UsageError
from ..model import GPT, GPTConfig
from .config import ADAM_BETAS, TrainConfig
from .task import Task, TaskError, as_task


def gpt_loss(model, x, y):
    return model(x, y)[1]


def build_task(cfg: TrainConfig) -> Task:
    """``cfg.model``'s Task: the GPT on the byte corpus, or what ``module:function`` returns.

    The seed is set first, so every rank builds identical weights (rank 0's are
    broadcast anyway, which also covers models that ignore the seed).
    """
    torch.manual_seed(cfg.seed)
    if cfg.model == "gpt":
        gpt = GPT(GPTConfig(context=cfg.context, layers=cfg.layers, heads=cfg.heads, width=cfg.width))
        return Task(gpt, gpt_loss)
    module_name, _, function_name = cfg.model.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"--model {cfg.model}: cannot import {function_name} from {module_name} ({e}) — give "
                         "gpt, or module:function with the module on PYTHONPATH") from None
    try:
        return as_task(factory(), cfg.model)
    except TaskError as e:  # a Task built from the wrong things inside the factory
        raise UsageError(f"--model {cfg.model}: {e}") from None


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module, reducer=None):
    """AdamW (or SGD, or 1-bit Adam) with weight decay on matrices only: decaying biases and norm gains only hurts.

    With ``cfg.zero`` 1 or 2, the same optimizer over this rank's shard (ZeroOptimizer on ``reducer``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kind, options = ((torch.optim.SGD, {"lr": cfg.lr, "momentum": cfg.momentum}) if cfg.optimizer == "sgd"
                     else (torch.optim.AdamW, {"lr": cfg.lr, "betas": ADAM_BETAS}))
    if cfg.optimizer == "onebit-adam":
        from ..optim import OneBitAdam
        return OneBitAdam(reducer, groups, lr=cfg.lr, betas=ADAM_BETAS, warmup=cfg.onebit_warmup)
    if cfg.dgc_adam:
        from ..optim import DGCAdam
        return DGCAdam(reducer, groups, lr=cfg.lr, betas=ADAM_BETAS, warmup=cfg.onebit_warmup,
                       dgc=cfg.compressor.fresh())  # the config's parsed prototype: a copy runs
    if cfg.zero in (1, 2):  # ZeRO-3's parameters are FSDP2's shards: a torch optimizer steps them as they are
        from ..optim import ZeroOptimizer
        return ZeroOptimizer(reducer, kind, groups, **options)
    return kind(groups, **options)
