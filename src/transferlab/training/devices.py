"""Which device a run trains on: the one place that asks whether a GPU is really there."""

import torch

from transferlab.errors import UserError
from transferlab.training.distributed import SINGLE, Ranks


def resolve_device(name: str, ranks: Ranks = SINGLE) -> torch.device:
    """`name` was checked by CompareConfig; here only whether a GPU is really there. Under torchrun each rank
    takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if ranks.is_distributed and device.type == "cuda":
        if device.index is not None:
            raise UserError(f"--device {name} would put every rank on one GPU; under torchrun give --device cuda "
                            "(each rank takes the GPU of its LOCAL_RANK) or pick GPUs with CUDA_VISIBLE_DEVICES")
        if ranks.local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {ranks.local_rank} has no GPU: only {torch.cuda.device_count()} are visible; "
                            "give torchrun --nproc_per_node at most that many")
        device = torch.device("cuda", ranks.local_rank)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA devices are visible")
    return device
