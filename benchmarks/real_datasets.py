"""Real small datasets from other domains, assembled from packages that install offline, for the ablations.

- fashion: the embedded Fashion-MNIST "hard five" (clothing photos, 28 px greyscale), train/val/test given.
- icons: the Oxygen icon theme's 48 px PNGs by category (apt-get install oxygen-icon-theme; LGPL):
  actions, apps, devices, mimetypes, places, status: what an icon shows, drawn, in colour with alpha.
- digits: scikit-learn's bundled handwritten digits (8x8, 10 classes; BSD), 60 per class: drawings.
Each builder writes DIR/<class>/*.png once and returns (data_dir or (train, val, test) dirs).
"""

from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.data.embedded import export_embedded

OXYGEN_48 = Path("/usr/share/icons/oxygen/base/48x48")
ICON_CLASSES = ("actions", "apps", "devices", "mimetypes", "places", "status")
ICONS_PER_CLASS = 120
DIGITS_PER_CLASS = 60  # "a few dozen to a few hundred per class" is the setting transferlab is for  # the smallest categories have 59-92: imbalanced on purpose, as real folders are


def fashion(root: Path) -> dict:
    train, val, test = export_embedded(root / "fashion")
    return {"train_dir": train, "val_dir": val, "test_dir": test}


def icons(root: Path) -> dict:
    out = root / "icons"
    if not (out / ".complete").exists():
        if not OXYGEN_48.is_dir():
            raise SystemExit(f"{OXYGEN_48} is missing: apt-get install oxygen-icon-theme")
        rng = np.random.default_rng(0)
        for name in ICON_CLASSES:
            files = sorted(p for p in (OXYGEN_48 / name).glob("*.png") if not p.is_symlink())
            chosen = sorted(rng.choice(len(files), size=min(ICONS_PER_CLASS, len(files)), replace=False))
            (out / name).mkdir(parents=True, exist_ok=True)
            for i in chosen:
                (out / name / files[i].name).write_bytes(files[i].read_bytes())
        (out / ".complete").write_text("oxygen-icon-theme 48x48 (LGPL)\n")
    return {"data_dir": out, "test_fraction": 0.2}


def digits(root: Path) -> dict:
    out = root / "digits"
    if not (out / ".complete").exists():
        from sklearn.datasets import load_digits
        data = load_digits()
        per_class: dict[int, int] = {}
        for i, (image, label) in enumerate(zip(data.images, data.target)):
            per_class[label] = per_class.get(label, 0) + 1
            if per_class[label] > DIGITS_PER_CLASS:
                continue
            path = out / str(label) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * (255 / 16)).astype(np.uint8), mode="L").save(path)
        (out / ".complete").write_text("scikit-learn digits (BSD)\n")
    return {"data_dir": out, "test_fraction": 0.2}


BUILDERS = {"fashion": fashion, "icons": icons, "digits": digits}
