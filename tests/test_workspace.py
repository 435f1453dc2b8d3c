"""Scratch buffers: reused within a thread, and freed with it, so nothing needs to free them by hand."""
import gc
import threading
import weakref

import numpy as np

from ringtrain.collectives import workspace
from ringtrain.reducer.comm_thread import CommThread


def test_a_slot_is_reused_and_grows_to_the_largest_request():
    small = workspace.get("test-reuse", np.float32, 10)
    large = workspace.get("test-reuse", np.float32, 1000)
    again = workspace.get("test-reuse", np.float32, 10)
    assert (small.size, large.size, again.size) == (10, 1000, 10)
    assert np.shares_memory(large, again) and not np.shares_memory(small, large)


def test_a_threads_buffers_are_freed_when_it_ends():
    buffers = []

    def work():
        buffers.append(weakref.ref(workspace.get("acc", np.float32, 1 << 20).base))

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    gc.collect()
    assert buffers and buffers[0]() is None


def test_the_reducers_communication_thread_frees_its_buffers_on_close():
    # The reducer's close() closes its CommThread, the owner of nearly all scratch space.
    buffers = []
    thread = CommThread(1, lambda index: buffers.append(weakref.ref(workspace.get("ring", np.float32, 1 << 20).base)))
    thread.mark_ready(0)
    thread.wait()
    alive_while_open = buffers[0]() is not None
    thread.close()
    gc.collect()
    assert alive_while_open and buffers[0]() is None
