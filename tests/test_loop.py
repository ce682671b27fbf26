"""training/loop.py: how an epoch is cut into batches."""

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.data.row_store import RowView
from transferlab.training.inputs import CachedInputs
from transferlab.training.loop import PhaseSpec, batch_bounds, batches_per_epoch, train_phase

CPU = torch.device("cpu")


def test_a_last_batch_of_one_image_joins_the_one_before():
    assert batch_bounds(25, 8) == [(0, 8), (8, 16), (16, 25)]
    assert batch_bounds(26, 8) == [(0, 8), (8, 16), (16, 24), (24, 26)]
    assert batch_bounds(1, 8) == [(0, 1)] and batch_bounds(9, 8) == [(0, 9)]
    assert batches_per_epoch(25, 8) == 3 and batches_per_epoch(24, 8) == 3


def test_a_network_with_batchnorm_trains_when_the_images_leave_one_over():
    """25 images in batches of 8 left a batch of one, which BatchNorm in train mode refuses (a traceback in
    compare's scratch phase for any training set one more than a multiple of --batch-size)."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    rows = RowView(np.random.default_rng(0).standard_normal((25, 8)).astype(np.float32), np.arange(25))
    labels = np.arange(25) % 3
    inputs = CachedInputs([rows], CPU)
    state = train_phase(module, module, inputs, labels, inputs, labels, PhaseSpec("scratch", 2, 1e-2, 8, 0),
                        [module], CPU, show_progress=False)
    assert len(state.history) == 2


def test_without_validation_images_no_epoch_is_evaluated_and_the_last_is_kept():
    """The final fit trains on the validation images: its epochs carry no validation numbers, the last state is
    kept, and a phase that would choose an epoch or stop on a plateau without validation is refused."""
    from dataclasses import replace

    from transferlab.training.recipes import Optimization, Stopping
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    rows = RowView(np.random.default_rng(0).standard_normal((24, 8)).astype(np.float32), np.arange(24))
    labels, inputs = np.arange(24) % 3, CachedInputs([rows], CPU)
    last = PhaseSpec("final", 3, 1e-2, 8, 0, optimization=Optimization(keep_best_epoch=False))
    state = train_phase(module, module, inputs, labels, None, None, last, [module], CPU, show_progress=False)
    assert [(r["val_acc"], r["val_loss"]) for r in state.history] == [(None, None)] * 3 and state.best_epoch == 3
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.best_state.items())
    for refused in (replace(last, optimization=Optimization(keep_best_epoch=True)),
                    replace(last, stopping=Stopping(plateau_patience=2))):
        with pytest.raises(ValueError, match="needs validation images"):
            train_phase(module, module, inputs, labels, None, None, refused, [module], CPU, show_progress=False)
