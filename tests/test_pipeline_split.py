"""Cutting the GPT into stages: the balance is the best contiguous cut (against every cut), --stage-layers is
checked, and a stage runs exactly its blocks of the unsharded GPT."""
import itertools

import pytest
import torch

from ringtrain.model import GPT, GPTConfig
from ringtrain.pipeline.split import Elsewhere, balance, block_counts, build_stages, parse_stage_layers


def best_largest(weights, parts, first, last):
    """The smallest largest part over every contiguous cut into ``parts`` non-empty runs."""
    best = None
    for cuts in itertools.combinations(range(1, len(weights)), parts - 1):
        bounds = (0, *cuts, len(weights))
        loads = [sum(weights[a:b]) for a, b in zip(bounds, bounds[1:])]
        loads[0] += first
        loads[-1] += last
        best = max(loads) if best is None else min(best, max(loads))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_balance_finds_the_best_contiguous_cut(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 9, (1,), generator=g))
    parts = int(torch.randint(1, n + 1, (1,), generator=g))
    weights = torch.randint(1, 20, (n,), generator=g).tolist()
    first, last = (int(v) for v in torch.randint(0, 15, (2,), generator=g))
    counts = balance(weights, parts, first, last)
    assert len(counts) == parts and sum(counts) == n and min(counts) >= 1
    bounds = [sum(counts[:i]) for i in range(parts + 1)]
    loads = [sum(weights[a:b]) for a, b in zip(bounds, bounds[1:])]
    loads[0] += first
    loads[-1] += last
    assert max(loads) == best_largest(weights, parts, first, last)


def test_stage_layers_are_checked():
    assert parse_stage_layers("3,3,2", 3, 8) == [3, 3, 2]
    for text in ("3,3", "3,3,3", "a,b,c", "3,-1,6", "4,0,4"):
        with pytest.raises(ValueError, match=rf"--stage-layers {text}: give 3 whole numbers >= 1, one per stage, "
                                             "that sum to --layers 8"):
            parse_stage_layers(text, 3, 8)


def test_the_stages_in_a_row_are_the_gpt():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(layers=5, width=32, heads=2, context=16))
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    whole = gpt(x)[0]
    counts = block_counts(gpt, 3)
    stages = build_stages(gpt, counts, [0, 1, 2])
    out = x
    for stage in stages:
        out = stage(out)
    assert sum(counts) == 5 and min(counts) >= 1
    assert torch.equal(out, whole)


def test_a_rank_keeps_only_its_blocks():
    gpt = GPT(GPTConfig(layers=4, width=32, heads=2, context=16))
    build_stages(gpt, [1, 1, 2], [1])
    kept = [not isinstance(b, Elsewhere) for b in gpt.blocks]
    assert kept == [False, True, False, False]
    with pytest.raises(RuntimeError, match="block 0 of this GPT runs on another pipeline rank"):
        gpt(torch.zeros(1, 16, dtype=torch.long))
