"""--precision: what the training and evaluation forwards run in, resolved per device and recorded."""

import json

import numpy as np
import torch
from torch import nn

from conftest import tiny_config
from transferlab.experiments.compare import run_compare
from transferlab.training.inputs import CachedInputs
from transferlab.training.loop import PhaseSpec, evaluate, resolve_precision, train_phase

CPU = torch.device("cpu")


class RecordsAutocast(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.seen: set[bool] = set()

    def forward(self, x):
        self.seen.add(torch.is_autocast_enabled("cpu"))
        return self.linear(x)


def test_auto_is_fp32_on_cpu_and_bf16_is_honoured():
    assert resolve_precision("auto", CPU) == "fp32" and resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"


def test_the_spec_precision_reaches_training_and_evaluation(tmp_path):
    rows = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    labels = np.arange(16) % 2
    inputs = CachedInputs([rows], CPU)
    for precision, expected in (("fp32", {False}), ("bf16", {True})):
        module = RecordsAutocast()
        spec = PhaseSpec(name="p", epochs=1, learning_rate=1e-3, batch_size=8, seed=0, precision=precision)
        train_phase(module, module, inputs, labels, inputs, labels, spec, [module], CPU, show_progress=False)
        evaluate(module, inputs, labels, 8, CPU, precision)
        assert module.seen == expected


def test_results_record_the_precision_used(small_data, tmp_path):
    for precision in ("auto", "bf16"):
        run = run_compare(tiny_config(small_data, tmp_path / precision, precision=precision, skip_scratch=True,
                                      frozen_epochs=1, finetune_epochs=1))
        results = json.loads((run / "results.json").read_text())
        assert results["training_precision"] == resolve_precision(precision, CPU)
        assert json.loads((run / "config.json").read_text())["config"]["precision"] == precision
