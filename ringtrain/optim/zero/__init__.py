"""ZeRO stages 1 and 2: the reducer's gradient shards (shards.py), the optimizer that steps them
(optimizer.py), its state cut at any world size (state.py) and its part of a checkpoint (checkpoint.py)."""
