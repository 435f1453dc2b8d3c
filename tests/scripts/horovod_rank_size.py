"""Prints this rank's place in the job as ringtrain.horovod sees it (tests/test_horovod_run.py launches it)."""
import ringtrain.horovod as hvd

hvd.init()
print(f"rank {hvd.rank()} of {hvd.size()}, local rank {hvd.local_rank()} of {hvd.local_size()}", flush=True)
hvd.shutdown()
