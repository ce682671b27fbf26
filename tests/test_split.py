import json
from collections import Counter

from transferlab.data.scan import scan_image_folder
from transferlab.data.split import apply_saved_split, save_split, split_stratified


def test_split_is_stratified_disjoint_and_complete(small_data):
    images = list(scan_image_folder(small_data).images)
    train, val, test = split_stratified(images, val_fraction=0.25, seed=1)
    assert test == []
    assert {im.path for im in train}.isdisjoint({im.path for im in val})
    assert len(train) + len(val) == len(images)
    # 12 per class * 0.25 = 3 validation images in every class
    assert Counter(im.label for im in val) == {label: 3 for label in range(5)}


def test_split_is_reproducible_and_seed_dependent(small_data):
    images = list(scan_image_folder(small_data).images)
    first = split_stratified(images, 0.2, seed=7)
    assert split_stratified(images, 0.2, seed=7) == first
    assert split_stratified(images, 0.2, seed=8)[1] != first[1]


def test_single_image_class_stays_in_training(tmp_path, small_data):
    images = list(scan_image_folder(small_data).images)
    lonely = [im for im in images if im.label == 0][:1] + [im for im in images if im.label == 1]
    train, val, _ = split_stratified(lonely, 0.2, seed=0)
    assert [im for im in train if im.label == 0] == lonely[:1]
    assert all(im.label == 1 for im in val)


def test_saved_split_round_trips(tmp_path, small_data):
    images = list(scan_image_folder(small_data).images)
    train, val, _ = split_stratified(images, 0.2, seed=3)
    save_split(tmp_path / "split.json", small_data, {"train": train, "val": val}, seed=3, val_fraction=0.2)
    saved = json.loads((tmp_path / "split.json").read_text())
    assert Counter(saved["files"].values()) == {"train": len(train), "val": len(val)}
    assert apply_saved_split(tmp_path / "split.json", small_data, images) == {"train": train, "val": val,
                                                                              "test": [], "dropped_val": [],
                                                                              "dropped_test": [], "excluded": []}


def test_a_test_split_is_stratified_disjoint_and_leaves_validation_as_it_was(small_data):
    images = list(scan_image_folder(small_data).images)
    train, val, test = split_stratified(images, 0.25, seed=1, test_fraction=0.25)
    assert Counter(im.label for im in test) == {label: 3 for label in range(5)}
    assert len({im.path for im in train} | {im.path for im in val} | {im.path for im in test}) == len(images)
    assert val == split_stratified(images, 0.25, seed=1)[1]
