"""The one read of the test set: every phase's kept model scored once, after every choice was made on
validation (experiments/phases.py trains them; compare and a study call this last)."""

import functools
from dataclasses import replace

import numpy as np

from transferlab.data.decoded import DecodedImages
from transferlab.experiments.datasets import labels_of
from transferlab.experiments.phases import CellModels, CellSetting, prefix_rows, scratch_inputs
from transferlab.results import PhaseResult
from transferlab.training.inputs import CachedInputs
from transferlab.training.loop import evaluate
from transferlab.training.metrics import balanced_accuracy


def predict_test_set(setting: CellSetting, test: DecodedImages, models: CellModels) -> dict[str, np.ndarray]:
    """Predictions of every phase's kept model on the test set: the only place the test set is read."""
    labels, batch_size, model = labels_of(test), setting.cfg.batch_size * 2, models.model
    device, ranks = setting.device, setting.ranks
    units = sorted(set(models.first_units.values()), reverse=True)
    # the frozen phase's state holds the pretrained backbone: after fine-tuning, the pooled features would
    # come from the fine-tuned tail and poison the cache kept under the pretrained weights' key
    model.load_state_dict(models.kept["frozen"][1])
    rows = dict(zip(units, prefix_rows(setting, model, units, test)))
    predictions = {}
    for name, first_unit in models.first_units.items():
        model.load_state_dict(models.kept[name][1])
        predictions[name] = evaluate(functools.partial(model.forward_from, first_unit),
                                     CachedInputs([rows[first_unit]], device), labels, batch_size, device,
                                     models.precisions[name], ranks).predictions
    if models.scratch is not None:
        models.scratch.eval()
        predictions["scratch"] = evaluate(models.scratch, scratch_inputs(setting, test), labels, batch_size, device,
                                          models.precisions["scratch"], ranks).predictions
    return predictions


def record_test_accuracy(phases: dict[str, PhaseResult], predictions: dict[str, np.ndarray], labels: np.ndarray,
                         n_classes: int) -> None:
    """The test read's numbers, added to each phase's result in `phases`."""
    for name, predicted in predictions.items():
        phases[name] = replace(phases[name], test_acc=float((predicted == labels).mean()) if len(labels) else 0.0,
                               balanced_test_acc=balanced_accuracy(labels, predicted, n_classes))
