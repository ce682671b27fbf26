"""From folders to the decoded train/validation subsets a run trains on, with split.json kept in step.

Order matters for resumability: scan → split.json (subsets only) → decode → content hashes into
split.json → leakage check. A run stopped anywhere after the scan resumes on the same files, and a resume
refuses data that changed since.
"""

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.data.decoded import DecodedImages, decode_images
from transferlab.data.images import Preprocessing
from transferlab.data.leakage import find_leakage
from transferlab.data.scan import ImageFolder, LabelledImage, scan_image_folder
from transferlab.data.split import apply_saved_split, check_content_unchanged, save_split, split_stratified
from transferlab.experiments.config import CompareConfig


@dataclass
class Split:
    train: DecodedImages
    val: DecodedImages
    class_names: tuple[str, ...]
    ignored_files: list[Path]


@dataclass(frozen=True)
class PreparedData:
    split: Split
    skipped: list            # SkippedFile: could not be decoded
    leakage: dict            # train/val duplicates found (and dropped with --dedupe)


def scan_folders(cfg: CompareConfig) -> tuple[ImageFolder, ImageFolder | None]:
    """Check the data before anything is created: a bad folder leaves no empty run behind."""
    if cfg.data_dir is not None:
        return scan_image_folder(cfg.data_dir), None
    train = scan_image_folder(cfg.train_dir)
    return train, scan_image_folder(cfg.val_dir, class_names=train.class_names)


def _subset(decoded: DecodedImages, keep: list[LabelledImage]) -> DecodedImages:
    index = {im.path: i for i, im in enumerate(decoded.images)}
    rows = [index[im.path] for im in keep if im.path in index]
    return DecodedImages(images=[decoded.images[i] for i in rows],
                         content_keys=[decoded.content_keys[i] for i in rows],
                         pixels=decoded.pixels.subset(np.array(rows, dtype=np.int64)), skipped=[])


def _leakage(train: DecodedImages, val: DecodedImages, dedupe: bool) -> tuple[list[int], dict]:
    """Validation positions that duplicate training images, and the summary the report shows."""
    leak = find_leakage(train.content_keys, train.pixels, val.content_keys, val.pixels)
    summary = {"exact_duplicates": len(leak.exact), "near_duplicates": len(leak.near), "dropped": dedupe,
               "examples": [str(val.images[i].path) for i in leak.all[:10]]}
    if leak.all:
        warnings.warn(f"{len(leak.exact)} validation images are exact and {len(leak.near)} near duplicates of "
                      f"training images (e.g. '{summary['examples'][0]}'); "
                      + ("dropped from validation (--dedupe)" if dedupe else "validation accuracy is optimistic; "
                         "use --dedupe to drop them"), stacklevel=4)
    return leak.all, summary


def prepare_data(cfg: CompareConfig, folders: tuple[ImageFolder, ImageFolder | None], prep: Preprocessing,
                 cache_dir: Path, run_dir: Path, resuming: bool) -> PreparedData:
    folder, val_folder = folders
    images = list(folder.images) + list(val_folder.images if val_folder else ())
    root = Path(folder.root) if val_folder is None else Path(os.path.commonpath([folder.root, val_folder.root]))
    split_path = run_dir / "split.json"
    seed, fraction = cfg.seed, (cfg.val_fraction if val_folder is None else None)
    if resuming and split_path.exists():
        subsets = apply_saved_split(split_path, root, images)
        subsets["val"] += subsets.pop("dropped")  # --dedupe finds and drops them again, identically
    else:
        if val_folder is None:
            train, val = split_stratified(images, cfg.val_fraction, seed)
        else:
            train, val = list(folder.images), list(val_folder.images)
        subsets = {"train": train, "val": val}
        save_split(split_path, root, subsets, seed=seed, val_fraction=fraction)

    decoded = decode_images(images, prep, cache_dir, strict=cfg.strict, show_progress=cfg.show_progress)
    content = {im.path: key for im, key in zip(decoded.images, decoded.content_keys)}
    if resuming and split_path.exists():
        check_content_unchanged(split_path, root, content)

    split = Split(_subset(decoded, subsets["train"]), _subset(decoded, subsets["val"]), folder.class_names,
                  list(folder.ignored_files) + list(val_folder.ignored_files if val_folder else ()))
    leaked, leakage = _leakage(split.train, split.val, cfg.dedupe)
    dropped = [split.val.images[i] for i in leaked] if cfg.dedupe else []
    gone = set(dropped)
    if gone:
        split.val = _subset(split.val, [im for im in split.val.images if im not in gone])
    save_split(split_path, root, {"train": subsets["train"], "val": [im for im in subsets["val"] if im not in gone],
                                  "dropped": dropped},
               seed=seed, val_fraction=fraction, content=content,
               skipped={s.path: s.reason for s in decoded.skipped})
    return PreparedData(split=split, skipped=decoded.skipped, leakage=leakage)


def labels_of(decoded: DecodedImages) -> np.ndarray:
    return np.array([im.label for im in decoded.images], dtype=np.int64)


def class_weights_for(labels: np.ndarray, n_classes: int) -> tuple[float, ...]:
    """Inverse class frequency, scaled so a balanced dataset gets all ones."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return tuple(float(w) for w in weights)
