"""A stratified, seeded validation split that is written once and reused by every phase."""

import json
from pathlib import Path

import numpy as np

from transferlab.atomic import write_json_atomic
from transferlab.data.scan import LabelledImage
from transferlab.errors import UserError


def split_stratified(images: list[LabelledImage], val_fraction: float, seed: int
                     ) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Per class, a seeded shuffle then round(n * val_fraction) to validation (at least 1, leaving 1).

    A class with a single image stays in training: it cannot be both learned and validated.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (got {val_fraction})")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted({im.label for im in images}):
        members = [im for im in images if im.label == label]
        order = rng.permutation(len(members))
        n_val = 0 if len(members) < 2 else min(max(1, round(len(members) * val_fraction)), len(members) - 1)
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    key = lambda im: (im.label, str(im.path))  # noqa: E731
    return sorted(train, key=key), sorted(val, key=key)


def save_split(path: Path, root: Path, train: list[LabelledImage], val: list[LabelledImage],
               seed: int, val_fraction: float, dropped_from_val: list[LabelledImage] = ()) -> None:
    """`dropped_from_val`: validation images that duplicate training ones (--dedupe); kept out of both."""
    files = {str(im.path.relative_to(root)): "train" for im in train}
    files |= {str(im.path.relative_to(root)): "val" for im in val}
    files |= {str(im.path.relative_to(root)): "dropped" for im in dropped_from_val}
    write_json_atomic(path, {"seed": seed, "val_fraction": val_fraction, "root": str(root),
                             "files": dict(sorted(files.items()))})


def apply_saved_split(path: Path, root: Path, images: list[LabelledImage], include_dropped: bool = False
                      ) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Re-use a run's split.json (resume, re-evaluation); files not in it are an error, not a guess."""
    subsets = json.loads(Path(path).read_text())["files"]
    train, val = [], []
    for im in images:
        subset = subsets.get(str(im.path.relative_to(root)))
        if subset is None:
            raise UserError(f"'{im.path}' is not in {path}: the data changed since the split was made; "
                            "start a new run instead of resuming")
        if subset == "train":
            train.append(im)
        elif subset == "val" or include_dropped:
            val.append(im)
    return train, val
