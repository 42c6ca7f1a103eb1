"""Where this process sits in a cell's DDP world: rank, world size and device.

Three ways in: no process group and no launcher variables (world size 1); a process group already
set up by the caller (Ray Train); or torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR...), in
which case we set the group up ourselves (gloo on CPU, NCCL on GPU) and take it down at the end.
A launcher's world of one gets a group too, so a cell under `torchrun --nproc_per_node=1` runs
the same DDP code, collectives included, as a larger world: the one way to try NCCL on one GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool

    @property
    def distributed(self) -> bool:
        """Whether a process group joins this process to others (DDP and collectives)."""
        return dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_hostable(world_size: int) -> None:
    """Fail at once when this machine cannot host the processes of `world_size` placed on it.

    A launcher says how many processes it put on this node (LOCAL_WORLD_SIZE); a caller that set up
    the process group itself (Ray Train) has placed them already; otherwise all run here.
    """
    if "LOCAL_WORLD_SIZE" not in os.environ and dist.is_initialized():
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if torch.cuda.is_available():
        if local > torch.cuda.device_count():
            raise ValueError(
                f"world_size={world_size} puts {local} processes on this node, "
                f"which has {torch.cuda.device_count()} GPUs"
            )
    elif local > 2 * (os.cpu_count() or 1):
        raise ValueError(
            f"world_size={world_size} puts {local} CPU processes on a machine with "
            f"{os.cpu_count()} cores (at most {2 * (os.cpu_count() or 1)})"
        )


def init_runtime(world_size: int) -> Runtime:
    """Join (or start, under torchrun) the process group a cell of `world_size` runs in."""
    check_hostable(world_size)
    owns_group = False
    launched = "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    if not dist.is_initialized() and launched:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        owns_group = True
    actual = dist.get_world_size() if dist.is_initialized() else 1
    if actual != world_size:
        if owns_group:
            dist.destroy_process_group()
        raise ValueError(
            f"the cell asks for world_size={world_size} but this process runs in a world "
            f"of {actual}; launch it with `torchrun --nproc_per_node={world_size}` "
            "or through Ray Train"
        )
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return Runtime(rank, actual, device, owns_group)


def close_runtime(runtime: Runtime) -> None:
    if runtime.owns_group and dist.is_initialized():
        dist.destroy_process_group()
