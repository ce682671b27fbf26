"""Recipes: `seeds` trains exactly seed 002's layers and learning rates; the recipe is recorded; overrides."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

import transferlab
from transferlab import compare
from transferlab.cli import _config, build_parser
from transferlab.errors import UserError
from transferlab.experiments.config import CompareConfig
from transferlab.models.backbones import create_backbone
from transferlab.models.freezing import unfreeze_last_keras_layers
from transferlab.models.transfer_model import TransferModel
from transferlab.training.recipes import PRESETS, Unfreeze, flag_of, recipe_fields, value_type


def test_last_20_keras_layers_of_mobilenetv2_are_blocks_15_16_and_conv_1():
    """Keras MobileNetV2: block_15_* (with its add), block_16_*, Conv_1, Conv_1_bn, out_relu."""
    model = TransferModel(create_backbone("mobilenetv2_100"), 5)
    plan = unfreeze_last_keras_layers(model, 20, train_batchnorm=True)
    trainable = {name.split(".weight")[0].split(".bias")[0] for name, p in model.backbone.named_parameters()
                 if p.requires_grad}
    expected = {f"blocks.{stage}.{block}.{layer}" for stage, block in ((5, 2), (6, 0))
                for layer in ("conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3")} | {"conv_head", "bn2"}
    assert trainable == expected
    assert plan.layers_counted == 14 and len(plan.train_mode_modules) == 7  # Keras trains their BatchNorms


def test_seed_000_fine_tune_at_100_leaves_block_11_expand_conv_frozen():
    model = TransferModel(create_backbone("mobilenetv2_100"), 5)
    unfreeze_last_keras_layers(model, 53)  # Keras' layers[100:] minus block_13_pad
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert "blocks.4.1.conv_pw.weight" not in trainable and "blocks.4.1.bn1.weight" not in trainable
    assert "blocks.4.1.conv_dw.weight" in trainable and "blocks.4.0.conv_pwl.weight" not in trainable


@pytest.fixture(scope="module")
def seeds_run(small_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seeds")
    cfg = tiny_config(small_data, tmp, recipe="seeds", unfreeze=None, frozen_epochs=None, finetune_epochs=None,
                      scratch_epochs=1, image_size_px=32, skip_scratch=True)
    return compare(cfg)


def test_seeds_recipe_trains_the_seeds_layers_and_rates(seeds_run):
    stored = json.loads((seeds_run / "config.json").read_text())
    assert stored["recipe"]["name"] == "seeds" and stored["recipe"]["overridden"] == ["image_size_px", "scratch_epochs"]
    assert stored["config"]["finetune_lr"] == 1e-5 and stored["config"]["unfreeze"] == "keras:20"
    # the input sizes are stored resolved: the seeds' scratch sees what the transfer models see
    assert CompareConfig.from_dict(stored["config"]).recipe == replace(PRESETS["seeds"], image_size_px=32,
                                                                       scratch_image_size_px=32, scratch_epochs=1)
    results = json.loads((seeds_run / "results.json").read_text())
    frozen, finetuned = results["phases"]["frozen"], results["phases"]["finetuned"]
    assert (frozen["learning_rate"], finetuned["learning_rate"]) == (1e-3, 1e-5)
    assert len(frozen["epochs"]) == 5 and len(finetuned["epochs"]) == 5
    assert finetuned["best_epoch"] == 5  # Keras keeps the last epoch, not the best one
    assert finetuned["unfreeze"]["batchnorm_trained"] == 7
    head = 1280 * 128 + 128 + 128 * 5 + 5
    assert frozen["trainable_parameters"] == head  # no dropout layer in seed 002's head: same count
    assert "Recipe `seeds`" in (seeds_run / "report.md").read_text()


def test_seeds_recipe_updates_batchnorm_statistics_only_in_the_unfrozen_tail(seeds_run):
    from safetensors.torch import load_file

    from transferlab.models.weights import load_pretrained
    pristine = TransferModel(create_backbone("tf_efficientnet_lite0"), 5)
    load_pretrained(pristine.backbone, "tf_efficientnet_lite0", None)
    before = pristine.state_dict()
    saved = torch.load(seeds_run / "checkpoints" / "finetuned.pt", weights_only=True)["module"]
    # the run's final model: every entry, whichever phase validation kept
    final = load_file(seeds_run / "model.safetensors")
    kept = json.loads((seeds_run / "model.json").read_text())["trained_phase"]
    tail = {"backbone.blocks.5.3.bn1", "backbone.blocks.5.3.bn2", "backbone.blocks.5.3.bn3",
            "backbone.blocks.6.0.bn1", "backbone.blocks.6.0.bn2", "backbone.blocks.6.0.bn3", "backbone.bn2"}
    in_checkpoint = {k.rsplit(".", 1)[0] for k in saved if k.endswith("running_mean")}
    changed = {k.rsplit(".", 1)[0] for k in before if k.endswith("running_mean")
               and not torch.equal(before[k], final[k])}
    assert in_checkpoint == tail  # the checkpoint holds what the phase can change, and only that
    assert all(not torch.equal(before[f"{m}.running_mean"], saved[f"{m}.running_mean"]) for m in tail)
    assert changed == (tail if kept == "finetuned" else set())


def test_default_recipe_is_recorded_and_overrides_are_named(small_data, tmp_path):
    cfg = tiny_config(small_data, tmp_path)
    assert cfg.recipe.name == "default"
    assert set(cfg.overridden_recipe_fields()) >= {"frozen_epochs", "finetune_epochs", "unfreeze"}
    assert cfg.recipe.optimization == PRESETS["default"].optimization  # not overridden


def test_the_fast_recipe_is_default_with_the_measured_fine_tune_and_flags_still_override_it(small_data):
    """`--recipe fast` differs from default only where it was measured to halve the time (README, "Recipes")."""
    def recipe(*argv):
        args = build_parser().parse_args(["compare", str(small_data), *argv])
        return _config(args, data_dir=args.data).recipe
    fast, default = recipe("--recipe", "fast"), recipe()
    differs = {k for k, v in fast.to_dict().items() if default.to_dict()[k] != v}
    assert differs == {"name", "finetune_epochs", "cached_views"}
    assert (fast.finetune_epochs, fast.cached_views) == (5, 2) and (default.finetune_epochs, default.cached_views) \
        == (10, 4)
    assert recipe("--recipe", "fast", "--finetune-epochs", "7").finetune_epochs == 7


@pytest.mark.parametrize("bad, message", [({"recipe": "fastest"}, "--recipe 'fastest' is unknown"),
                                          ({"optimizer": "lion"}, "--optimizer must be one of"),
                                          ({"unfreeze": "some:3"}, "unfreeze 'some:3'"),
                                          ({"label_smoothing": 1.5}, "--label-smoothing")])
def test_bad_recipe_values_fail_when_the_config_is_built(bad, message, small_data, tmp_path):
    with pytest.raises(UserError, match=message):
        tiny_config(small_data, tmp_path, **bad)
    assert not any(tmp_path.iterdir())


# a valid value other than every preset's, per field type
OTHER_VALUES = {int: 3, float: 0.25, bool: None, str: None, Unfreeze: Unfreeze("blocks", 2)}


@pytest.mark.parametrize("field", recipe_fields(), ids=lambda f: f.name)
def test_every_recipe_field_reaches_the_cli_and_the_stored_config(field, small_data):
    """A field declared once in Recipe is a CLI flag, overrides the preset, is named as overridden and survives
    config.json's round trip."""
    kind = value_type(field)
    preset = PRESETS["default"].to_dict()[field.name]
    if kind is bool:
        value, argv = not preset, [flag_of(field) if not preset else "--no-" + flag_of(field)[2:]]
    elif field.metadata["choices"]:
        value = next(c for c in field.metadata["choices"] if c != preset)
        argv = [flag_of(field), value]
    elif kind is Unfreeze:
        value, argv = OTHER_VALUES[Unfreeze], ["--unfreeze-blocks", "2"]
    else:
        value = OTHER_VALUES[kind] if field.name not in ("image_size_px", "scratch_image_size_px") else 48
        argv = [flag_of(field), str(value)]
    args = build_parser().parse_args(["compare", str(small_data), *argv])
    cfg = _config(args, data_dir=args.data)
    stored = {k: v for k, v in cfg.recipe.to_dict().items()}
    assert stored[field.name] == (str(value) if kind is Unfreeze else value)
    assert cfg.overridden_recipe_fields() == [field.name]
    assert CompareConfig.from_dict(cfg.to_dict()) == cfg


# what the weights resolve to (timm's pretrained_cfg), which the recipe's image_size_px overrides when given
OTHER_CONCEPTS = {("images.py", "image_size_px")}
# results.py mirrors results.json's keys: a key named like a recipe field there is what a run recorded
RESULTS = "results.py"


def test_recipe_fields_are_declared_once_in_src():
    """No other module re-declares a recipe field as a dataclass field or a hand-written flag."""
    src = Path(transferlab.__file__).parent
    for path in src.rglob("*.py"):
        if path.name in ("recipes.py", RESULTS):
            continue
        text = path.read_text()
        for field in recipe_fields():
            if (path.name, field.name) in OTHER_CONCEPTS:
                continue
            assert not re.search(rf"^\s+{field.name}\s*:", text, re.M), f"{path}: {field.name} declared again"
            assert f'"{flag_of(field)}"' not in text, f"{path}: {flag_of(field)} written by hand"
