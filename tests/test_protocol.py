"""The honest protocol: train / validation (every choice) / test (reported once, read only at the end)."""

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from transferlab import compare, evaluate_folder
from transferlab.data import row_store
from transferlab.experiments import phases as phases_module

SUBSETS = ("train", "val", "test")


@pytest.fixture(scope="module")
def watched_run(small_data, tmp_path_factory):
    """A run with --test-fraction whose every read of a cached row is logged by content key, in order with
    the end of each training phase."""
    events: list[tuple[str, object]] = []
    patch = pytest.MonkeyPatch()
    original_rows, original_subset = row_store.RowStore.rows, row_store.RowView.subset
    original_getitem, original_train = row_store.RowView.__getitem__, phases_module.train_phase

    def rows(self, keys):
        view = original_rows(self, keys)
        view.keys = np.array(keys)
        return view

    def subset(self, positions):
        view = original_subset(self, positions)
        view.keys = self.keys[np.asarray(positions, dtype=np.int64)]
        return view

    def getitem(self, positions):
        events.append(("read", set(self.keys[positions].tolist())))
        return original_getitem(self, positions)

    def train_phase(*args, **kwargs):
        state = original_train(*args, **kwargs)
        events.append(("trained", args[6].name))
        return state

    patch.setattr(row_store.RowStore, "rows", rows)
    patch.setattr(row_store.RowView, "subset", subset)
    patch.setattr(row_store.RowView, "__getitem__", getitem)
    patch.setattr(phases_module, "train_phase", train_phase)
    try:
        run_dir = compare(tiny_config(small_data, tmp_path_factory.mktemp("protocol"), test_fraction=0.25,
                                      final_fit=True, cache_dir=tmp_path_factory.mktemp("fresh-cache")))
    finally:
        patch.undo()
    return run_dir, events


def test_test_split_is_stratified_disjoint_and_saved(watched_run):
    run_dir, _ = watched_run
    files = json.loads((run_dir / "split.json").read_text())["files"]
    by_subset = {s: {f for f, subset in files.items() if subset == s} for s in SUBSETS}
    assert all(by_subset[a].isdisjoint(by_subset[b]) for a in SUBSETS for b in SUBSETS if a < b)
    assert Counter(f.split("/")[0] for f in by_subset["test"]) == {c: 3 for c in
                                                                   {f.split("/")[0] for f in files}}
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"]["n_test"] == 15 and results["verdict"]["subset"] == "test"
    for phase in results["phases"].values():
        assert 0 <= phase["test_acc"] <= 1


def test_test_images_are_read_only_after_every_phase_trained(watched_run):
    run_dir, events = watched_run
    split = json.loads((run_dir / "split.json").read_text())
    test_keys = {split["content"][f] for f, subset in split["files"].items() if subset == "test"}
    last_training = max(i for i, (kind, _) in enumerate(events) if kind == "trained")
    test_reads = [i for i, (kind, keys) in enumerate(events) if kind == "read" and keys & test_keys]
    # the selection's phases, then the final fit's (frozen, and fine-tuned with 0 epochs if frozen was kept)
    assert Counter(name for kind, name in events if kind == "trained") == {"frozen": 2, "finetuned": 2, "scratch": 1}
    assert test_reads, "the test set was never evaluated"
    assert min(test_reads) > last_training, "a test image was read before training ended"


def test_the_saved_model_is_the_final_fit_on_train_and_validation_and_the_verdict_its_test_accuracy(
        watched_run, small_data, tmp_path):
    run_dir, _ = watched_run
    results = json.loads((run_dir / "results.json").read_text())
    data, final = results["data"], results["phases"]["final"]
    assert results["model_phase"] == "final" and results["final_fit"]["of"] in ("frozen", "finetuned")
    assert results["final_fit"]["n_train"] == data["n_train"] + data["n_val"]
    assert final["val_acc"] is None and results["verdict"]["acc"] == final["test_acc"]
    of = results["phases"][results["final_fit"]["of"]]
    assert len(final["epochs"]) == len(of["epochs"]) and final["best_epoch"] == len(final["epochs"])  # the last
    # it trains on the validation images: no epoch of it is evaluated there (nothing to choose, nothing to report)
    final_rows = [json.loads(line) for line in (run_dir / "final" / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in final_rows} == {"frozen", results["final_fit"]["of"]}
    assert all(r["val_acc"] is None and r["val_loss"] is None for r in final_rows + final["epochs"])
    assert final["steps"] == len(final["epochs"]) * -(-(data["n_train"] + data["n_val"]) // 16)
    assert (run_dir / "final" / "checkpoints" / "frozen.pt").exists()
    assert "final fit (train + val)" in (run_dir / "report.md").read_text()
    split = json.loads((run_dir / "split.json").read_text())
    test_dir = tmp_path / "test_only"
    for rel, subset in split["files"].items():
        if subset == "test":
            (test_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (test_dir / rel).write_bytes((small_data / rel).read_bytes())
    assert abs(evaluate_folder(run_dir, test_dir, onnx=False)["accuracy"] - final["test_acc"]) < 1e-9  # what was saved


def test_without_a_test_set_the_report_says_validation_is_optimistic(finished_run):
    results = json.loads((finished_run / "results.json").read_text())
    assert results["verdict"]["subset"] == "validation" and results["data"]["n_test"] == 0
    report = (finished_run / "report.md").read_text()
    assert "optimistic" in report and "--test" in report


def test_frozen_test_accuracy_is_the_pretrained_backbone_with_the_frozen_head(watched_run):
    """Test features are computed after fine-tuning changed the tail: they must still be the pretrained
    backbone's (the cache key says so), or the frozen phase's test number is another model's."""
    import torch

    from transferlab.data.images import load_for_model
    from transferlab.models.backbones import load_backbone
    from transferlab.models.transfer_model import TransferModel
    from transferlab.training.inputs import normalise

    run_dir, _ = watched_run
    results = json.loads((run_dir / "results.json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    test_files = [f for f, subset in split["files"].items() if subset == "test"]
    names = results["data"]["class_names"]
    pretrained = load_backbone("tf_efficientnet_lite0", None, 32)
    model = TransferModel(pretrained.module, len(names)).eval()
    frozen_state = torch.load(run_dir / "checkpoints" / "frozen.pt", weights_only=True)["best_state"]
    assert frozen_state and all(k.startswith("head.") for k in frozen_state)  # the phase trains the head only
    model.load_state_dict(frozen_state, strict=False)
    pixels = np.stack([load_for_model(Path(split["root"]) / f, pretrained.preprocessing) for f in test_files])
    with torch.no_grad():
        predicted = model(normalise(torch.from_numpy(pixels), pretrained.preprocessing)).argmax(1).numpy()
    labels = np.array([names.index(f.split("/")[0]) for f in test_files])
    assert abs(float((predicted == labels).mean()) - results["phases"]["frozen"]["test_acc"]) <= 1 / len(labels)


@pytest.mark.parametrize("final_fit", [False, True])
def test_a_test_image_copied_from_validation_is_leakage_once_validation_is_trained_on(final_fit, embedded_dirs,
                                                                                       tmp_path):
    folders = {}
    for subset, source in zip(("train", "val", "test"), embedded_dirs):
        for class_dir in sorted(source.iterdir()):
            (tmp_path / subset / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:4]:
                (tmp_path / subset / class_dir.name / image.name).write_bytes(image.read_bytes())
        folders[f"{subset}_dir"] = tmp_path / subset
    copied = next((tmp_path / "val").rglob("*.png"))
    (tmp_path / "test" / copied.parent.name / "copy_of_a_validation_image.png").write_bytes(copied.read_bytes())
    cfg = tiny_config(None, tmp_path, data_dir=None, **folders, final_fit=final_fit, skip_scratch=True,
                      frozen_epochs=1, finetune_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = json.loads((compare(cfg) / "results.json").read_text())
    assert results["data"]["leakage"]["test"]["exact_duplicates"] == (1 if final_fit else 0)


def test_runs_lists_the_final_fit_the_saved_model_and_the_verdict_are_of(watched_run):
    """Before, `transferlab runs` listed frozen and fine-tuned only, never the number the verdict quotes."""
    from transferlab.reporting.runs_index import list_runs
    run_dir, _ = watched_run
    results = json.loads((run_dir / "results.json").read_text())
    phases = results["phases"]
    [line] = [line for line in list_runs(run_dir.parent) if line.startswith(run_dir.name)]
    assert line == (f"{run_dir.name}: tf_efficientnet_lite0, compare, test acc "
                    + ", ".join(f"{label} {100 * phases[p]['test_acc']:.1f}%" for p, label in (
                        ("scratch", "scratch (before)"), ("frozen", "pretrained, frozen"), ("finetuned", "fine-tuned"),
                        ("final", "final fit (train + val)"))))
