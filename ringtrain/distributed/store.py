"""A torch.distributed key-value store served by rank 0 over MPI: a rendezvous without TCP or MASTER_ADDR.

torch uses its store to meet: ``TORCH_DIST_INIT_BARRIER=1``'s barrier after
init, ``new_group``'s, gloo's exchange of addresses. Its TCPStore needs
MASTER_ADDR and an open port, which ``srun`` and ``mpiexec`` do not give, and
a per-process HashStore hangs in the first barrier. Here rank 0 keeps the
table and answers requests on a private communicator; every other call is a
request and its reply. Requests are rare (a few per group created), so the
server polls with a sleep (``POLL_S``) instead of spinning in MPI_Recv and
taking a core from rank 0's training for the whole job.

>>> from mpi4py import MPI
>>> store = MPIStore(MPI.COMM_SELF)
>>> store.set("key", b"value"); store.get("key"), store.add("n", 2), store.add("n", 3)
(b'value', 2, 5)
>>> store.close()
"""
import atexit
import itertools
import threading
import time
from datetime import timedelta

import torch.distributed as dist
from mpi4py import MPI

POLL_S = 0.001  # the server's sleep between polls: it answers within a millisecond, and costs no core
REQUEST, FIRST_REPLY = 1, 2  # message tags; each request's reply has its own tag, so threads never take another's


class MPIStore(dist.Store):
    """``dist.Store`` on MPI. Collective to create (every rank of ``comm``); each call afterwards is not."""

    def __init__(self, comm: MPI.Comm, timeout: timedelta = timedelta(minutes=30)):
        super().__init__()
        self.comm = comm.Dup()  # its own context: no message of the user's or ringtrain's can match it
        self._timeout = timeout
        self._tags = itertools.count(FIRST_REPLY)
        self._tag_lock = threading.Lock()
        self._server = _Server(self.comm) if self.comm.Get_rank() == 0 else None
        atexit.register(self.close)  # before mpi4py's MPI_Finalize (atexit runs last-registered first)

    # -- the store's interface, as torch calls it --------------------------------------------------
    def set(self, key: str, value) -> None:
        self._ask("set", key, bytes(value))

    def get(self, key: str) -> bytes:
        return self._ask("get", key, self._deadline())

    def add(self, key: str, amount: int) -> int:
        return self._ask("add", key, int(amount))

    def compare_set(self, key: str, expected, desired) -> bytes:
        return self._ask("compare_set", key, (bytes(expected), bytes(desired)))

    def wait(self, keys, timeout: timedelta | None = None) -> None:
        self._ask("wait", list(keys), self._deadline(timeout))

    def check(self, keys) -> bool:
        return self._ask("check", list(keys), None)

    def delete_key(self, key: str) -> bool:
        return self._ask("delete_key", key, None)

    def num_keys(self) -> int:
        return self._ask("num_keys", None, None)

    def set_timeout(self, timeout: timedelta) -> None:
        self._timeout = timeout

    # -- requests ----------------------------------------------------------------------------------
    def _deadline(self, timeout: timedelta | None = None) -> float:
        return time.time() + (self._timeout if timeout is None else timeout).total_seconds()

    def _ask(self, what: str, key, argument):
        with self._tag_lock:
            tag = next(self._tags)
        self.comm.send((what, key, argument, tag), dest=0, tag=REQUEST)
        request = self.comm.irecv(source=0, tag=tag)
        while True:  # polite: a get may wait minutes for another rank's set
            done, reply = request.test()
            if done:
                break
            time.sleep(POLL_S)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self) -> None:
        """Stop rank 0's server (every rank may call it; idempotent)."""
        if self._server is not None:
            self._server.stop()
            self._server = None


class _Server:
    """Rank 0's table and the thread that answers requests in the order they arrive."""

    def __init__(self, comm: MPI.Comm):
        self.comm, self.table, self.parked = comm, {}, []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="ringtrain-store", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()

    def _serve(self) -> None:
        pending = self.comm.irecv(source=MPI.ANY_SOURCE, tag=REQUEST)
        status = MPI.Status()
        while True:
            done, request = pending.test(status)
            if not done:
                if self._stop.is_set():
                    pending.Cancel()
                    return
                self._expire()
                time.sleep(POLL_S)
                continue
            source = status.Get_source()
            pending = self.comm.irecv(source=MPI.ANY_SOURCE, tag=REQUEST)
            self._answer(source, *request)
            self._wake()

    def _answer(self, source: int, what: str, key, argument, tag: int) -> None:
        table = self.table
        if what in ("get", "wait"):  # they wait for keys another rank may not have set yet
            self.parked.append((source, what, key, argument, tag))
            return
        if what == "set":
            table[key] = argument
            reply = None
        elif what == "add":
            value = int(table.get(key, b"0")) + argument
            table[key] = str(value).encode()
            reply = value
        elif what == "compare_set":
            expected, desired = argument
            current = table.get(key)
            if (current is None and not expected) or current == expected:
                table[key] = desired
            reply = table.get(key, expected)
        elif what == "check":
            reply = all(k in table for k in key)
        elif what == "delete_key":
            reply = table.pop(key, None) is not None
        else:  # num_keys
            reply = len(table)
        self.comm.send(reply, dest=source, tag=tag)

    def _wake(self) -> None:
        """Answer the parked gets and waits whose keys are now set."""
        still = []
        for source, what, key, deadline, tag in self.parked:
            keys = [key] if what == "get" else key
            if all(k in self.table for k in keys):
                self.comm.send(self.table[key] if what == "get" else None, dest=source, tag=tag)
            else:
                still.append((source, what, key, deadline, tag))
        self.parked = still

    def _expire(self) -> None:
        now, still = time.time(), []
        for source, what, key, deadline, tag in self.parked:
            if now > deadline:
                missing = [k for k in ([key] if what == "get" else key) if k not in self.table]
                self.comm.send(TimeoutError(f"MPIStore: {what} timed out waiting for {missing} "
                                            f"(rank {source} asked; no rank set them)"), dest=source, tag=tag)
            else:
                still.append((source, what, key, deadline, tag))
        self.parked = still
