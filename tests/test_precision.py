"""--precision: what the training and evaluation forwards run in, resolved per device and recorded."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_config
from transferlab.experiments.compare import run_compare
from transferlab.training.inputs import CachedInputs
from transferlab.training import precision as precision_module
from transferlab.training.precision import (BF16_MIN_SPEEDUP, MEASURE, cpu_has_native_bf16, measure_cpu_precision,
                                            precision_policy)
from transferlab.training.loop import PhaseSpec, evaluate, train_phase

CPU = torch.device("cpu")


class RecordsAutocast(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.seen: set[bool] = set()

    def forward(self, x):
        self.seen.add(torch.is_autocast_enabled("cpu"))
        return self.linear(x)


def test_auto_on_cpu_is_measured_where_bf16_is_native_and_bf16_is_honoured():
    assert precision_policy("auto", CPU) == (MEASURE if cpu_has_native_bf16() else "fp32")
    assert precision_policy("fp32", CPU) == "fp32" and precision_policy("bf16", CPU) == "bf16"


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


def test_results_record_the_precision_each_phase_used(small_data, tmp_path):
    for precision in ("auto", "bf16"):
        run = run_compare(tiny_config(small_data, tmp_path / precision, precision=precision, skip_scratch=True,
                                      frozen_epochs=1, finetune_epochs=1))
        results = json.loads((run / "results.json").read_text())
        used = results["training_precision"]
        assert set(used) == {"frozen", "finetuned"} and set(used.values()) <= {"fp32", "bf16"}
        for name, phase in results["phases"].items():
            assert phase["precision"] == used[name] and {r["precision"] for r in phase["epochs"]} == {used[name]}
            probe = phase["precision_probe"]
            if precision == "bf16" or not cpu_has_native_bf16():
                assert probe is None and used[name] == precision_policy(precision, CPU)
            else:  # measured, and the faster one kept
                seconds = probe["step_seconds"]
                assert used[name] == ("bf16" if seconds["fp32"] >= BF16_MIN_SPEEDUP * seconds["bf16"] else "fp32")
        assert json.loads((run / "config.json").read_text())["config"]["precision"] == precision


def test_the_precision_probe_leaves_everything_as_it_found_it_and_is_measured_once(tmp_path, monkeypatch):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 3)).eval()
    rows = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    labels = np.arange(32) % 3
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng_before = torch.get_rng_state()
    choice = measure_cpu_precision(module, module, CachedInputs([rows], CPU), labels, 16, [module], tmp_path)
    assert choice["precision"] in ("fp32", "bf16") and set(choice["step_seconds"]) == {"fp32", "bf16"}
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert all(p.grad is None for p in module.parameters()) and not module.training
    assert torch.equal(torch.get_rng_state(), rng_before)  # dropout masks of the run are not shifted

    def measured_again(*args):
        raise AssertionError("the cached choice was not used")
    monkeypatch.setattr(precision_module, "step_seconds", measured_again)
    assert measure_cpu_precision(module, module, CachedInputs([rows], CPU), labels, 16, [module], tmp_path) == choice
    with pytest.raises(AssertionError, match="not used"):  # another batch shape is another measurement
        measure_cpu_precision(module, module, CachedInputs([rows], CPU), labels, 8, [module], tmp_path)
    assert len(list((tmp_path / "precision").glob("*.json"))) == 1  # the failed measurement stored nothing
    monkeypatch.setattr(precision_module, "step_seconds", lambda *args: {"fp32": 1.0, "bf16": 2.0})
    other = measure_cpu_precision(module, module, CachedInputs([rows], CPU), labels, 8, [module], tmp_path)
    assert other["batch_shape"] == [8, 8] and other["step_seconds"] == {"fp32": 1.0, "bf16": 2.0}
    assert measure_cpu_precision(module, module, CachedInputs([rows], CPU), labels, 16, [module], tmp_path) == choice


def test_a_damaged_precision_cache_file_is_measured_again_not_trusted(tmp_path, monkeypatch):
    module = nn.Linear(8, 3)
    rows = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    labels = np.arange(16) % 3
    choose = lambda: measure_cpu_precision(module, module, CachedInputs([rows], CPU), labels, 16, [module],  # noqa: E731
                                          tmp_path)
    first = choose()
    path, = (tmp_path / "precision").glob("*.json")
    measured = []
    monkeypatch.setattr(precision_module, "step_seconds", lambda *a: measured.append(1) or {"fp32": 1.0, "bf16": 2.0})
    for damaged in ("{}", '{"precision": "fp8", "step_seconds": {"fp32": 1, "bf16": 1}}', "[1, 2", "null"):
        path.write_text(damaged)
        assert choose()["precision"] == "fp32" and json.loads(path.read_text())["precision"] == "fp32"
    assert len(measured) == 4 and first["precision"] in ("fp32", "bf16")


def test_emulated_bf16_is_said_once_per_run(small_data, tmp_path, monkeypatch):
    """The warning came once from the command's option check and once more from the phases (issue: said twice)."""
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_compare(tiny_config(small_data, tmp_path, precision="bf16", skip_scratch=True, frozen_epochs=1,
                                finetune_epochs=1))
    assert [str(w.message) for w in caught if "emulated" in str(w.message)] == [
        "--precision bf16: this CPU has no AVX-512 BF16 or AMX, so bf16 is emulated and slower than fp32"]
