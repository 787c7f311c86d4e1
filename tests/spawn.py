"""Run a function on local processes joined in one gloo process group (loopback only)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, out, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, *args), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def run_ranks(fn, directory, *args, world=2):
    """``fn(rank, *args)`` on ``world`` spawned processes; their results, by rank.

    ``fn`` must be a module-level function (spawn imports it); a failure on any rank
    fails the call with that rank's traceback.
    """
    out = os.path.join(str(directory), "result")
    mp.start_processes(_entry, args=(world, free_port(), fn, out, args), nprocs=world, start_method="spawn", join=True)
    return [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(world)]
