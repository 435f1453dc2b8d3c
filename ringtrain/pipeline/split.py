"""Cutting the GPT into pipeline stages: contiguous runs of blocks, balanced by parameter count.

Stage 0 also embeds the bytes (token and position embeddings); the last
stage also holds the final norm and the head, which the GPT ties to the
token embedding. Under a pipeline the first and last stage each hold that
matrix, and their gradients are summed between them before the step (as
Megatron keeps its tied embedding), so the two copies stay one weight.

A stage references the GPT's own modules, so the same seed gives the same
initial weights as an unsharded run; the blocks a rank does not run are
dropped from its GPT, which is what frees them.
"""
import torch
from torch import nn


def balance(weights: list[int], parts: int, first: int = 0, last: int = 0) -> list[int]:
    """Blocks per part: contiguous, each part's weight (plus ``first`` on part 0 and ``last`` on the last part)
    as even as can be, by the smallest largest part (binary search over the bound, greedy fill)."""
    if parts < 1 or len(weights) < parts:
        raise ValueError(f"{len(weights)} blocks cannot fill {parts} stages")

    def fill(bound: int) -> list[int] | None:
        counts, load, i = [], first, 0
        for part in range(parts):
            extra = last if part == parts - 1 else 0
            n = 0
            while i < len(weights) and (n == 0 or load + weights[i] + extra <= bound) \
                    and len(weights) - (i + 1) >= parts - part - 1:
                load, n, i = load + weights[i], n + 1, i + 1
            if load + extra > bound:
                return None
            counts.append(n)
            load = 0
        return counts if i == len(weights) else None

    lo, hi = max(weights), first + last + sum(weights)
    while lo < hi:
        mid = (lo + hi) // 2
        if fill(mid) is None:
            lo = mid + 1
        else:
            hi = mid
    return fill(lo)


def parse_stage_layers(text: str, stages: int, layers: int) -> list[int]:
    """``--stage-layers 3,3,2``: blocks per stage, given; checked against the stage and layer counts."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if len(counts) != stages or any(c < 1 for c in counts) or sum(counts) != layers:
        raise ValueError(f"--stage-layers {text}: give {stages} whole numbers >= 1, one per stage, that sum to "
                         f"--layers {layers}")
    return counts


def block_counts(gpt, stages: int, stage_layers: str = "") -> list[int]:
    """Blocks per stage: as ``stage_layers`` says, or balanced by parameter count."""
    layers = len(gpt.blocks)
    if stage_layers:
        return parse_stage_layers(stage_layers, stages, layers)
    if layers < stages:
        raise ValueError(f"{stages} stages need at least {stages} blocks, and the GPT has --layers {layers}")

    def size(module):
        return sum(p.numel() for p in module.parameters())

    return balance([size(b) for b in gpt.blocks], stages, first=size(gpt.tok) + size(gpt.pos),
                   last=size(gpt.ln_f))


class GPTStage(nn.Module):
    """Stage ``index`` of ``stages``: embeds on the first, runs its blocks, norms and projects on the last."""

    def __init__(self, gpt, index: int, stages: int, blocks: range):
        super().__init__()
        self.first, self.last = index == 0, index == stages - 1
        if self.first:
            self.tok, self.pos, self.drop = gpt.tok, gpt.pos, gpt.drop
        self.blocks = nn.ModuleList(gpt.blocks[i] for i in blocks)
        if self.last:
            self.ln_f, self.head = gpt.ln_f, gpt.head

    def forward(self, x):
        if self.first:
            x = self.drop(self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)) if self.last else x


def build_stages(gpt, counts: list[int], mine: list[int]) -> list[GPTStage]:
    """This rank's stages (indices ``mine`` of ``len(counts)``); the GPT keeps only the blocks they run."""
    starts = [sum(counts[:i]) for i in range(len(counts))]
    built = [GPTStage(gpt, i, len(counts), range(starts[i], starts[i] + counts[i])) for i in mine]
    kept = {j for i in mine for j in range(starts[i], starts[i] + counts[i])}
    for j in range(len(gpt.blocks)):
        if j not in kept:
            gpt.blocks[j] = Elsewhere(j)  # its parameters are freed with it
    return built


class Elsewhere(nn.Module):
    """A block another pipeline rank runs: calling this rank's GPT whole is an error, not a wrong answer."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x):
        raise RuntimeError(f"block {self.index} of this GPT runs on another pipeline rank: run the model through "
                           "its pipeline, or load its checkpoint into an unpipelined GPT")
