"""One training on several processes (``torchrun``): the process group and the few collectives the loop needs.

``torchrun --nproc-per-node N -m gbmseg train ...`` starts N copies of ``gbmseg train`` with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` reads them, joins the process group
(NCCL on CUDA, one GPU per process: ``cuda:LOCAL_RANK``; Gloo on CPU) and returns the process's
device. Without those variables (or with ``WORLD_SIZE=1``) every function here is a no-op for a
single process, so the training loop has one code path.

Example:
    >>> import torch
    >>> setup(torch.device("cpu"))          # not started by torchrun: a single process
    device(type='cpu')
    >>> rank(), world_size(), is_main()
    (0, 1, True)
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
_owned = False  # True when setup() started the process group (so teardown() may end it)


def requested() -> bool:
    """Whether this process was started as one of several (``WORLD_SIZE`` > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group if torchrun asked for one (once per process); the device this rank uses."""
    global _owned
    if not requested():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=60))  # rank 0 validates, preprocesses
        _owned = True
    return device


def teardown() -> None:
    """Leave the process group if :func:`setup` started it."""
    global _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def barrier() -> None:
    if active():
        dist.barrier()


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, then on the other ranks (for work that writes shared files, such as the cache,
    and is a no-op once done)."""
    if not active():
        return fn()
    if is_main():
        out = fn()
        dist.barrier()
        return out
    dist.barrier()
    return fn()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch norm's running statistics) on every rank, in place. DDP sends them
    before each forward pass, which then updates each rank's copy from its own case."""
    if active():
        for b in module.buffers():
            dist.broadcast(b, src=0)


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of ``flags`` over the ranks (one small all-reduce)."""
    if not active():
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def shard(items: list[T]) -> list[T]:
    """This rank's share of ``items`` (every ``world_size``-th, from ``rank``); all of them when there
    are fewer items than ranks (then the ranks differ only in what they draw)."""
    if len(items) < world_size():
        return list(items)
    return list(items[rank()::world_size()])
