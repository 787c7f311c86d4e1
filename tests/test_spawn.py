"""The process harness of the distributed tests stops by itself: a stuck rank is killed."""

import sys
import time

import pytest
import torch.distributed as dist
from spawn import run_ranks

pytestmark = pytest.mark.skipif(
    not dist.is_available() or sys.platform != "linux", reason="needs torch.distributed with gloo on Linux"
)


def stuck_on_rank_1(rank):
    if rank == 1:
        time.sleep(600)
    return rank


def test_a_stuck_rank_is_killed_at_the_deadline(tmp_path):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="stuck_on_rank_1 on 2 ranks ran past 8 s"):
        run_ranks(stuck_on_rank_1, tmp_path, world=2, timeout=8)
    assert time.monotonic() - started < 60
