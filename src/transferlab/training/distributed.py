"""Training under torchrun: which process of how many this is, and the few collectives the phases need.

torchrun (`--nproc_per_node`, `--nnodes`, `--rdzv-endpoint`) is the launcher; this module only reads what
it puts in the environment. The rank is passed explicitly rather than read from the process group deep
inside, so that what trains as a single process (a study's cell, which scales over Ray instead) gets `SINGLE`.
"""

import atexit
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from transferlab.errors import UserError
from transferlab.training.ranks import SINGLE, Ranks, torchrun_ranks  # noqa: F401 (re-exported)

T = TypeVar("T")


def join_process_group(ranks: Ranks, device: torch.device) -> None:
    """NCCL for GPUs, gloo for CPUs; joined once per process (a study and its compare share it)."""
    if not ranks.is_distributed:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        if dist.get_backend() != backend:
            raise UserError(f"--device {device} cannot train under the {dist.get_backend()} process group this "
                            f"process joined; use --device {'cuda' if device.type == 'cpu' else 'cpu'}")
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    atexit.register(dist.destroy_process_group)


def _reduce_device() -> torch.device:
    """NCCL reduces GPU tensors only; gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(values: list[float], ranks: Ranks) -> list[float]:
    """Element-wise sums over all ranks, in float64: loss sums and correct counts of an epoch."""
    if not ranks.is_distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """True on every rank if it is true on one: a stop must be agreed, or the others wait on it forever."""
    return sum_over_ranks([float(flag)], ranks)[0] > 0


def gather_objects(value: T, ranks: Ranks) -> list[T]:
    """Every rank's `value`, in rank order, on every rank."""
    if not ranks.is_distributed:
        return [value]
    gathered: list = [None] * ranks.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(ranks: Ranks) -> None:
    if ranks.is_distributed:
        dist.barrier()


def run_on_main(action: Callable[[], T], ranks: Ranks) -> T:
    """`action` runs on rank 0 only (it writes or measures); every rank gets its result, or raises the
    UserError it raised, so a refused option stops the whole job with one line instead of a hang."""
    if not ranks.is_distributed:
        return action()
    outcome: list = [None]
    if ranks.is_main:
        try:
            outcome = [(True, action())]
        except UserError as e:
            outcome = [(False, str(e))]
    dist.broadcast_object_list(outcome, src=0)
    succeeded, value = outcome[0]
    if not succeeded:
        raise UserError(value)
    return value


def fill_shard_wise(fill: Callable[[np.ndarray], object], n_items: int, ranks: Ranks) -> None:
    """Each rank fills a cache for its share of the items, then all wait for each other.

    The caller's full pass that follows finds the rows the others wrote (the row stores merge concurrent
    writers); rows a rank cannot see, on a node with its own cache folder, it computes itself.
    """
    if ranks.is_distributed:
        fill(ranks.share(n_items))
        dist.barrier()


class PhaseForward(nn.Module):
    """A phase's forward function as a module: DDP wraps modules, and a phase's inputs may enter the model
    mid-network (at the cached cut), through `forward_from` rather than `forward`."""

    def __init__(self, module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.module = module
        self.run = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def data_parallel(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                  device: torch.device) -> nn.Module:
    """DDP over the parameters that require grad: it averages their gradients across ranks in backward."""
    return nn.parallel.DistributedDataParallel(PhaseForward(module, forward),
                                               device_ids=[device] if device.type == "cuda" else None)


def broadcast_buffers(module: nn.Module, ranks: Ranks) -> None:
    """Rank 0's BatchNorm statistics on every rank (each rank updated them on its share of the batch), so
    that every rank evaluates the same model. DDP does the same before each training forward."""
    if ranks.is_distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
