"""Run a function on local processes joined in one gloo process group (loopback only).

Bounded: a collective that waits on a dead or stuck peer fails after ``COLLECTIVE_TIMEOUT``,
and the whole run after ``timeout`` seconds, with every rank killed.
"""

import faulthandler
import os
import socket
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT = timedelta(seconds=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, out, args):
    faulthandler.enable(all_threads=True)  # a crash prints every thread's Python stack
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    try:
        torch.save(fn(rank, *args), f"{out}.{rank}")
        dist.barrier()  # no rank tears its connections down while another still uses them
    finally:
        dist.destroy_process_group()
    # The result is on disk and the group destroyed: leave without the interpreter's
    # finalization. Gloo and DDP objects still alive in reference cycles are destroyed there,
    # and a rank has been seen to abort in it ("terminate called without an active
    # exception", SIGABRT) after its work was done (CI, 2026-11-22).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, directory, *args, world=2, timeout=300):
    """``fn(rank, *args)`` on ``world`` spawned processes; their results, by rank.

    ``fn`` must be a module-level function (spawn imports it); a failure on any rank
    fails the call with that rank's traceback. Past ``timeout`` seconds every rank is
    killed and ``TimeoutError`` raised.
    """
    out = os.path.join(str(directory), "result")
    context = mp.start_processes(
        _entry, args=(world, free_port(), fn, out, args), nprocs=world, start_method="spawn", join=False
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            for process in context.processes:
                process.join()
            raise TimeoutError(f"{fn.__name__} on {world} ranks ran past {timeout} s: every rank was killed")
    return [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(world)]
