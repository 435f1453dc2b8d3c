"""Pipeline stages: cutting the GPT (split.py), placing ranks (layout.py), forward-only runs (chain.py) and the
unsharded checkpoint format (whole_state.py). The training loop's side is train/pipelined.py."""
