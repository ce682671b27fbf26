"""This process's place in a torchrun job, read from the environment: nothing heavy is imported, so the CLI
can ask before it knows whether it will train."""

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank 0 of 1 outside torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0            # the GPU index on this node

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file and shows the progress bars."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def share(self, n_items: int) -> np.ndarray:
        """Positions of this rank's contiguous share of n items (shares differ in size by at most one)."""
        return np.array_split(np.arange(n_items), self.world_size)[self.rank]


SINGLE = Ranks()


def torchrun_ranks() -> Ranks:
    """From torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); SINGLE when they are not set."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    return Ranks(int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
