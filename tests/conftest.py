"""Small real data for every test: a slice of the embedded Fashion-MNIST set, written as PNG folders."""

import shutil
from pathlib import Path

import pytest

from transferlab.data.embedded import export_embedded
from transferlab.experiments.config import CompareConfig

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


def tiny_config(data: Path, tmp: Path, **overrides) -> CompareConfig:
    """Seconds, not minutes: 32 px, 1-2 epochs, the offline EfficientNet-Lite0 weights, no final fit (the
    protocol tests turn it on)."""
    settings = dict(data_dir=data, backbone="tf_efficientnet_lite0", image_size_px=32, scratch_epochs=1,
                    frozen_epochs=2, finetune_epochs=2, unfreeze="layers:6", batch_size=16, engine="torch",
                    final_fit=False, runs_dir=tmp / "runs", cache_dir=tmp / "cache", show_progress=False)
    return CompareConfig(**(settings | overrides))


@pytest.fixture(scope="session")
def finished_run(small_data, tmp_path_factory) -> Path:
    from transferlab import compare
    return compare(tiny_config(small_data, tmp_path_factory.mktemp("run")))
