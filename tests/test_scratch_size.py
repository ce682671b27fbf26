"""The scratch baseline at its own input size (--scratch-image-size), and the ks a study trains scratch at."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from transferlab import StudyConfig, compare
from transferlab.data.images import resized_rows
from transferlab.errors import UserError
from transferlab.experiments.phases import with_input_sizes
from transferlab.models.backbones import PretrainedBackbone, create_backbone, preprocessing_for
from transferlab.models.transfer_model import TransferModel
from transferlab.models.weights import WeightsSource
from transferlab.training.inputs import ImageInputs
from transferlab.training.recipes import PRESETS, scratch_size_for


def test_scratch_trains_and_is_scored_at_its_own_input_size(small_data, tmp_path, monkeypatch):
    """Scratch's train, validation and test batches are 24 px while the transfer models see 32 px, and the
    report's table says so per model."""
    shapes = set()
    batch = ImageInputs.batch

    def spy(self, positions, epoch):  # only the scratch baseline reads images (the transfer phases read caches)
        x = batch(self, positions, epoch)
        shapes.add(tuple(x.shape[2:]))
        return x
    monkeypatch.setattr(ImageInputs, "batch", spy)
    run_dir = compare(tiny_config(small_data, tmp_path, scratch_image_size_px=24, test_fraction=0.2))
    assert shapes == {(24, 24)}
    results = json.loads((run_dir / "results.json").read_text())
    assert results["recipe"]["scratch_image_size_px"] == 24 and results["preprocessing"]["image_size_px"] == 32
    assert results["phases"]["scratch"]["test_acc"] is not None
    table = (run_dir / "report.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    column = [c.strip() for c in header.split("|")].index("input px")
    sizes = {row.split("|")[1].strip(): row.split("|")[column].strip() for row in table.splitlines()
             if row.startswith("| ") and not row.startswith("| model")
             and row.split("|")[1].strip() in ("scratch (before)", "pretrained, frozen", "fine-tuned")}
    assert sizes == {"scratch (before)": "24", "pretrained, frozen": "32", "fine-tuned": "32"}


def test_resized_rows_match_pillow_resizing_each_image(small_data):
    """The scratch input is the decoded row shrunk by Pillow (antialiased), image by image."""
    rows = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32)))
                     for p in sorted(small_data.rglob("*.png"))[:3]])
    out = resized_rows(rows, 20, "bicubic")
    assert out.shape == (3, 20, 20, 3) and out.dtype == np.uint8
    for row, small in zip(rows, out):
        assert np.array_equal(small, np.asarray(Image.fromarray(row).resize((20, 20), Image.Resampling.BICUBIC)))


def test_a_scratch_size_below_the_minimum_is_a_one_line_error(small_data, tmp_path):
    with pytest.raises(UserError, match=r"--scratch-image-size .*must be a whole number from 16"):
        tiny_config(small_data, tmp_path, scratch_image_size_px=8)


@pytest.mark.parametrize("ks, scratch_ks, expected", [
    ((5, 10, 25, 50, 100, None), None, (5, 25, None)),   # the smallest, the middle one of the rest, all
    ((5, 25, None), None, (5, 25, None)),               # three or fewer: every one
    ((5, 10, 25, None), (10,), (10, None)),             # as asked, all added
])
def test_scratch_ks_default_to_the_smallest_the_middle_and_all(ks, scratch_ks, expected, small_data, tmp_path):
    cfg = StudyConfig(tiny_config(small_data, tmp_path, test_fraction=0.25), ks=ks, scratch_ks=scratch_ks)
    assert cfg.scratch_ks_run() == expected


def test_scratch_ks_must_be_some_of_the_ks(small_data, tmp_path):
    with pytest.raises(UserError, match="--scratch-ks: 7 is not one of --ks"):
        StudyConfig(tiny_config(small_data, tmp_path, test_fraction=0.25), ks=(5, None), scratch_ks=(7,))


def test_a_study_trains_scratch_only_at_its_scratch_ks(small_data, tmp_path):
    """Transfer at every k, scratch at all and the ks asked for; the per-k table shows '–' where it did not
    train, and the data claim still pairs transfer at each k with scratch on all of the data."""
    from transferlab import study
    cfg = StudyConfig(tiny_config(small_data, tmp_path, test_fraction=0.25, scratch_epochs=1, frozen_epochs=1,
                                  finetune_epochs=1), seeds=1, ks=(1, 2, 4, None), scratch_ks=(2,),
                      study_dir=tmp_path / "study")
    study_dir = study(cfg)
    cells = json.loads((Path(study_dir) / "results.json").read_text())["cells"]
    trained = {str(c["k"]): set(c["phases"]) for c in cells}
    assert trained == {"1": {"frozen", "finetuned"}, "2": {"frozen", "finetuned", "scratch"},
                       "4": {"frozen", "finetuned"}, "all": {"frozen", "finetuned", "scratch"}}
    report = (Path(study_dir) / "report.md").read_text()
    assert "it trains at k = 2, all only" in report
    row = next(line for line in report.splitlines() if line.startswith("| 1 | 1 |"))
    assert row.split("|")[3].strip() == "–"  # scratch's column at k = 1


def test_every_preset_trains_scratch_at_the_transfer_size_unless_asked():
    """Measured: shrinking scratch on the 28 px embedded set cost it 7.6 pts of validation accuracy."""
    for preset in PRESETS.values():
        recipe = replace(preset, image_size_px=96)
        assert scratch_size_for(recipe) == 96
        assert scratch_size_for(replace(recipe, scratch_image_size_px=48)) == 48


def test_a_backbone_built_for_one_size_keeps_scratch_at_it_unless_asked(small_data, tmp_path):
    """vit_tiny takes 224 px only: scratch trains at 224 px by default; an explicit 64 is a one-line error."""
    module = create_backbone("vit_tiny_patch16_224")
    pretrained = PretrainedBackbone("vit_tiny_patch16_224", module, WeightsSource("random", "test", "x"),
                                    preprocessing_for(module, None), None)
    model = TransferModel(module, 5)
    cfg = tiny_config(small_data, tmp_path, image_size_px=None)
    assert with_input_sizes(cfg, model, pretrained).recipe.scratch_image_size_px == 224
    with pytest.raises(UserError, match="cannot take 64 px inputs.*drop --scratch-image-size"):
        with_input_sizes(tiny_config(small_data, tmp_path, image_size_px=None, scratch_image_size_px=64), model,
                         pretrained)
