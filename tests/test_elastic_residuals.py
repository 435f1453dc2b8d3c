"""elastic/residuals.py: what the survivors' line says of their compressor state, by what each could load."""
from mpi4py import MPI

from ringtrain.elastic import residuals


class Sync:
    def __init__(self, loads: bool):
        self.loads, self.loaded = loads, None

    def state_dict(self):
        return {"compression": [{"residual": [1.0, 2.0]}]}

    def load_state_dict(self, state, warn=True):
        assert warn is False  # the survivors' line says it, not the resume's warning
        self.loaded = state
        return self.loads


def test_kept_state_is_loaded_and_said():
    sync = Sync(loads=True)
    state = residuals.snapshot(sync, compresses=True)
    assert residuals.restore(sync, state, MPI.COMM_SELF) == ("; each survivor keeps its compressor state (the "
                                                             "dead rank's part is lost)")
    assert sync.loaded == state


def test_a_changed_node_layout_restarts_it_at_zero_and_says_so():
    sync = Sync(loads=False)
    text = residuals.restore(sync, {"compression": [], "blocks": [2, 1, 0]}, MPI.COMM_SELF)
    assert text == "; compressor state restarts at zero (node-aware compression: the node layout changed)"


def test_nothing_compressed_nothing_said():
    sync = Sync(loads=True)
    assert residuals.snapshot(sync, compresses=False) is None
    assert residuals.restore(sync, None, MPI.COMM_SELF) == "" and sync.loaded is None
