"""Small real data for every test: a slice of the embedded Fashion-MNIST set, written as PNG folders."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.data.embedded import export_embedded
from transferlab.experiments.config import CompareConfig
from transferlab.training.recipes import recipe_fields, resolve_recipe

IMAGES_PER_CLASS = 12


@pytest.fixture(scope="session")
def embedded_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return export_embedded(tmp_path_factory.mktemp("embedded"))


@pytest.fixture(scope="session")
def small_data(embedded_dirs, tmp_path_factory) -> Path:
    """DATA/<class>/*.png with IMAGES_PER_CLASS real images per class (5 classes)."""
    root = tmp_path_factory.mktemp("small") / "fashion"
    for class_dir in sorted(embedded_dirs[0].iterdir()):
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:IMAGES_PER_CLASS]:
            shutil.copy(image, root / class_dir.name / image.name)
    return root


@pytest.fixture(scope="session")
def planted_labels(embedded_dirs, tmp_path_factory) -> tuple[Path, list[Path]]:
    """Two classes a probe tells apart at once (Fashion-MNIST coats; crops of scikit-image's colour photos),
    30 each, plus two images of each class planted in the other's folder: (DATA, the planted files)."""
    from skimage import data as photos
    root = tmp_path_factory.mktemp("planted") / "data"
    (root / "garment").mkdir(parents=True)
    (root / "photo").mkdir()
    coats = sorted((embedded_dirs[0] / "Coat").iterdir())[:32]
    rng = np.random.default_rng(0)
    sources = [photos.astronaut(), photos.chelsea(), photos.coffee(), photos.rocket()]
    crops = []
    for i in range(32):
        p = sources[i % 4]
        y, x = rng.integers(0, p.shape[0] - 128), rng.integers(0, p.shape[1] - 128)
        crops.append(Image.fromarray(p[y:y + 128, x:x + 128]))
    for coat in coats[:30]:
        shutil.copy(coat, root / "garment" / coat.name)
    for i, crop in enumerate(crops[:30]):
        crop.save(root / "photo" / f"photo_{i:02d}.png")
    wrong = [root / "photo" / coats[30].name, root / "photo" / coats[31].name,
             root / "garment" / "photo_30.png", root / "garment" / "photo_31.png"]
    shutil.copy(coats[30], wrong[0])
    shutil.copy(coats[31], wrong[1])
    crops[30].save(wrong[2])
    crops[31].save(wrong[3])
    return root, wrong


TIMINGS = {"seconds", "elapsed_seconds"}  # wall-clock: differs between any two runs


def metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl less its timings: what two runs of the same seed must agree on exactly."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


TINY_RECIPE = dict(image_size_px=32, scratch_epochs=1, frozen_epochs=2, finetune_epochs=2, unfreeze="layers:6",
                   final_fit=False)


def tiny_config(data: Path, tmp: Path, recipe: str = "default", **overrides) -> CompareConfig:
    """Seconds, not minutes: 32 px, 1-2 epochs, the offline EfficientNet-Lite0 weights, no final fit (the
    protocol tests turn it on). `overrides` may name recipe fields (None: the preset's) and config fields."""
    recipe_names = {f.name for f in recipe_fields()}
    recipe_values = TINY_RECIPE | {k: v for k, v in overrides.items() if k in recipe_names}
    settings = dict(data_dir=data, backbone="tf_efficientnet_lite0", batch_size=16, engine="torch",
                    runs_dir=tmp / "runs", cache_dir=tmp / "cache", show_progress=False)
    return CompareConfig(**(settings | {k: v for k, v in overrides.items() if k not in recipe_names}),
                         recipe=resolve_recipe(recipe, recipe_values))


@pytest.fixture(scope="session")
def finished_run(small_data, tmp_path_factory) -> Path:
    from transferlab import compare
    return compare(tiny_config(small_data, tmp_path_factory.mktemp("run")))
