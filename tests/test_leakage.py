"""Leakage: copies of training images in validation are found; different images are not flagged."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from transferlab.data.decoded import decode_images
from transferlab.data.images import Preprocessing
from transferlab.data.leakage import find_leakage
from transferlab.data.scan import scan_image_folder

PREP = Preprocessing(64, (0.5,) * 3, (0.5,) * 3)


def _decode(folder, cache):
    return decode_images(list(scan_image_folder(folder).images), PREP, cache, show_progress=False)


def test_exact_and_near_copies_are_found_and_nothing_else(embedded_dirs, tmp_path):
    train_src, val_src, _ = embedded_dirs
    train, val = tmp_path / "train", tmp_path / "val"
    shutil.copytree(train_src, train)
    shutil.copytree(val_src, val)
    coat = sorted((train / "Coat").iterdir())
    shutil.copy(coat[0], val / "Coat" / "exact_copy.png")
    buffer = io.BytesIO()
    Image.open(coat[1]).convert("RGB").resize((56, 56), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=80)
    (val / "Coat" / "resized_jpeg_copy.jpg").write_bytes(buffer.getvalue())

    t, v = _decode(train, tmp_path / "cache"), _decode(val, tmp_path / "cache")
    leak = find_leakage(t.content_keys, t.pixels, v.content_keys, v.pixels)
    names = lambda positions: {v.images[i].path.name for i in positions}  # noqa: E731
    assert names(leak.exact) == {"exact_copy.png"}
    assert names(leak.near) == {"resized_jpeg_copy.jpg"}  # the 500 real validation images are not flagged


def test_dedupe_drops_copies_from_validation_before_the_split_is_saved(small_data, tmp_path):
    import json
    from conftest import tiny_config
    from transferlab.experiments.compare import run_compare
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    for i, image in enumerate(sorted((data / "Shirt").iterdir())[:4]):
        shutil.copy(image, data / "Shirt" / f"zz_copy_{i}.png")  # same bytes under another name
    with pytest.warns(UserWarning, match="dropped from validation"):
        run = run_compare(tiny_config(data, tmp_path, dedupe=True, skip_scratch=True, frozen_epochs=1,
                                      finetune_epochs=1))
    results = json.loads((run / "results.json").read_text())
    split = json.loads((run / "split.json").read_text())["files"]
    leaked = results["data"]["leakage"]
    assert leaked["dropped"] and leaked["exact_duplicates"] >= 1
    assert list(split.values()).count("dropped_val") == leaked["exact_duplicates"] + leaked["near_duplicates"]
    assert results["data"]["n_val"] == list(split.values()).count("val")
    assert np.sum(results["confusion_matrix"]["matrix"]) == results["data"]["n_val"]
