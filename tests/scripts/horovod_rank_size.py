"""Prints this rank's place in the job as ringtrain.horovod sees it, and the stall warning's time it was given
(tests/test_horovod_run.py launches it)."""
import os
import sys

import ringtrain.horovod as hvd

hvd.init()
stall = os.environ.get("HOROVOD_STALL_CHECK_TIME_SECONDS", "unset")
# One write per line: split in two (print's text, then its newline, under PYTHONUNBUFFERED=1), the launcher may
# put another rank's output between them.
sys.stdout.write(f"rank {hvd.rank()} of {hvd.size()}, local rank {hvd.local_rank()} of {hvd.local_size()}, "
                 f"stall warning {stall}\n")
sys.stdout.flush()
hvd.shutdown()
