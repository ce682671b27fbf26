"""The embedded default dataset: Fashion-MNIST's five look-alike upper-body classes (MIT licence).

500 training, 500 validation and 500 test 28x28 images (validation and test are disjoint draws from
Fashion-MNIST's separate test file), built by scripts/build_embedded_dataset.py and shipped inside the
package so the demo needs no network and no apt.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.atomic import write_text_atomic

EMBEDDED_FILE = Path(__file__).with_name("fashion_mnist_hard5.npz")
NAME = "fashion_mnist_hard5"
SUBSETS = ("train", "val", "test")


def export_embedded(directory: Path) -> tuple[Path, Path, Path]:
    """Write DIR/{train,val,test}/<class>/*.png; returns (train_dir, val_dir, test_dir).

    Idempotent: a completed export is marked, so the demo re-uses it (and the caches keyed on it).
    """
    directory = Path(directory)
    marker = directory / ".complete-v2"  # v1 exports had no test part
    if not marker.exists():
        with np.load(EMBEDDED_FILE) as data:
            class_names = [str(c) for c in data["class_names"]]
            for subset in SUBSETS:
                for i, (pixels, label) in enumerate(zip(data[f"{subset}_images"], data[f"{subset}_labels"])):
                    path = directory / subset / class_names[label] / f"{subset}_{i:04d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pixels, mode="L").save(path)
        write_text_atomic(marker, "Fashion-MNIST hard five (MIT licence, (c) Zalando SE)\n")
    return directory / "train", directory / "val", directory / "test"
