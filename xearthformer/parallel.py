"""Process-level parallelism facts shared by training and saving: rank and world size of a
``torch.distributed`` run, joining the group ``torchrun`` describes, and the plain module
inside a DistributedDataParallel/DataParallel or ``torch.compile`` wrapper.

>>> distributed_info()
(0, 1)
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def distributed_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1); returns
    (rank, world size). NCCL when CUDA is available, else gloo. A no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return distributed_info()


def unwrap_model(model: Any) -> Any:
    """The plain module inside DistributedDataParallel/DataParallel or torch.compile wrappers.

    >>> net = torch.nn.Linear(2, 2)
    >>> unwrap_model(torch.nn.DataParallel(net)) is net
    True
    """
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
