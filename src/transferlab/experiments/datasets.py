"""From folders to the decoded train/validation subsets a run trains on, with split.json kept in step.

Order matters for resumability: scan → decode (into the shared cache, before a run folder exists, so
--strict and a class without enough usable images fail with nothing written) → split of the usable images →
split.json with content hashes → leakage check. A run stopped anywhere after the split resumes on the same
files, and a resume refuses data that changed since.
"""

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from transferlab.atomic import utf8_bytes
from transferlab.data.decoded import DecodedImages, decode_images
from transferlab.data.exclude import check_excluded_known
from transferlab.data.images import Preprocessing
from transferlab.data.leakage import find_leakage
from transferlab.data.scan import ImageFolder, LabelledImage, scan_image_folder
from transferlab.data.split import (RESUME_FIX, apply_saved_split, check_content_unchanged, save_split,
                                   split_stratified)
from transferlab.errors import UserError, one_line, quoted
from transferlab.experiments.config import CompareConfig
from transferlab.options import default_cache_dir
from transferlab.training.distributed import SINGLE, Ranks, fill_shard_wise


@dataclass
class Split:
    train: DecodedImages
    val: DecodedImages
    test: DecodedImages | None  # read once, after every choice was made on validation
    class_names: tuple[str, ...]
    ignored_files: list[Path]


@dataclass
class PreparedData:
    split: Split
    skipped: list                                # SkippedFile: could not be decoded
    leakage: dict                                # duplicates of training images found (dropped with --dedupe)
    split_path: Path                             # split.json, kept in step with what is dropped
    root: Path
    subsets: dict[str, list[LabelledImage]]
    content: dict[Path, str]                     # content hash per decoded file
    dropped: dict[str, list[LabelledImage]]      # per subset, by --dedupe
    decoded: DecodedImages | None = None         # every image, decoded once: the subsets are views of it
    writes_split: bool = True                    # under torchrun only rank 0 writes split.json


@dataclass(frozen=True)
class Folders:
    train: ImageFolder             # DATA itself when the split is made here
    val: ImageFolder | None        # an explicit --val folder
    test: ImageFolder | None       # an explicit --test folder
    decoded: DecodedImages | None = None  # every image, decoded by decode_folders before a run folder exists,
    decoded_as: str | None = None         # at this geometry (a backbones study decodes again for each)

    @property
    def all(self) -> list[ImageFolder]:
        return [f for f in (self.train, self.val, self.test) if f is not None]


def scan_folders(cfg: CompareConfig) -> Folders:
    """Check the data before anything is created: a bad folder leaves no empty run behind."""
    train = scan_image_folder(cfg.data_dir or cfg.train_dir)
    labelled_like_train = lambda d: None if d is None else scan_image_folder(d, class_names=train.class_names)  # noqa: E731
    folders = Folders(train, labelled_like_train(cfg.val_dir), labelled_like_train(cfg.test_dir))
    for flag, folder, says in (("--val", folders.val, "validation cannot choose for"),
                               ("--test", folders.test, "test accuracy says nothing of")):
        present = {im.label for im in folder.images} if folder is not None else set(range(len(train.class_names)))
        missing = [name for label, name in enumerate(train.class_names) if label not in present]
        if missing:  # allowed (a class may be rare), never unsaid
            warnings.warn(f"{flag} {quoted(folder.root)} has no folder of class {', '.join(map(quoted, missing))}; "
                          f"{says} {'it' if len(missing) == 1 else 'them'}: add {quoted(folder.root / missing[0])}",
                          stacklevel=2)
    listed = [im.path for im in _all_images(folders)] + [p for f in folders.all for p in f.ignored_files]
    for path in listed:  # split.json and results.json name them: a name they cannot hold fails now, not there
        try:
            utf8_bytes(str(path))
        except UnicodeDecodeError:
            raise UserError(f"{quoted(path)}: its name (or a folder's above it) is not UTF-8; rename it with a UTF-8 "
                            "name") from None
    printable = [name for name in train.class_names if one_line(name) != name]
    if printable:  # a label with a newline would break every line predict and evaluate print
        raise UserError(f"class folder {quoted(printable[0])} in {quoted(train.root)} has a control character "
                        "(e.g. a newline) in its name; rename the folder")
    return folders


def _all_images(folders: Folders) -> list[LabelledImage]:
    return [LabelledImage(_absolute(im.path), im.label) for folder in folders.all for im in folder.images]


def decode_folders(cfg: CompareConfig, folders: Folders, prep: Preprocessing, cache_dir: Path,
                   ranks: Ranks = SINGLE) -> Folders:
    """Every image decoded into the shared cache now, before a run folder exists, so an undecodable file
    under --strict, or a class left with too few usable images, fails with nothing written; the run then
    reads the cache."""
    images = _all_images(folders)
    fill_shard_wise(lambda share: decode_images([images[i] for i in share], prep, cache_dir, strict=cfg.strict,
                                                show_progress=cfg.show_progress), len(images), ranks)
    decoded = decode_images(images, prep, cache_dir, strict=cfg.strict, show_progress=cfg.show_progress)
    folders = replace(folders, decoded=decoded, decoded_as=prep.geometry_key())
    check_enough_per_class(cfg, folders)
    return folders


def check_enough_per_class(cfg: CompareConfig, folders: Folders) -> dict[str, list[LabelledImage]]:
    """The split of the usable images (those that decoded); a class left without a training, validation or
    test image is a UserError naming it, never a model that silently never saw it (or a report row '– – 0')."""
    usable = folders.decoded.images
    subsets = _without_excluded(cfg, folders, _initial_split(cfg, folders, usable))
    names = folders.train.class_names
    has_test = folders.test is not None or cfg.test_fraction > 0
    wanted = ["train"] + (["val"] if folders.val is None else []) + (["test"] if cfg.test_fraction > 0 else [])
    for label, name in enumerate(names):
        lacking = [s for s in wanted if not any(im.label == label for im in subsets[s])]
        if lacking:
            in_pool = {_absolute(im.path) for im in folders.train.images if im.label == label}
            n_usable = sum(im.path in in_pool for im in usable)
            n_failed = sum(s.path in in_pool for s in folders.decoded.skipped)
            needs = [{"train": "training", "val": "validation", "test": "test"}[s] for s in wanted]
            failed = f" ({n_failed} could not be decoded, each named in a warning above)" if n_failed else ""
            n_excluded = sum(_absolute(im.path) in in_pool for im in subsets["excluded"])
            failed += f" once --exclude left out {n_excluded}" if n_excluded else ""
            fix = "list fewer of its images in --exclude, or add images" if n_excluded else "add images"
            fractions = "" if folders.val is not None else f" at --val-fraction {cfg.val_fraction:g}" + (
                f" --test-fraction {cfg.test_fraction:g}" if cfg.test_fraction else "")
            raise UserError(f"class {quoted(name)} has {n_usable - n_excluded} usable images{failed}, too few for a "
                            f"{' and a '.join([', a '.join(needs[:-1]), needs[-1]] if len(needs) > 1 else needs)} "
                            f"image{fractions}; {fix} to that class folder in {quoted(folders.train.root)} "
                            "or remove it")
    for subset, folder in (("val", folders.val), ("test", folders.test)):
        present = {im.label for im in folder.images} if folder is not None else set()
        missing = sorted(present - {im.label for im in subsets[subset]})
        if missing and (subset == "val" or has_test):
            name, root = names[missing[0]], quoted(folder.root)
            excluded = {_absolute(im.path) for im in subsets["excluded"]}
            if any(_absolute(im.path) in excluded for im in folder.images if im.label == missing[0]):
                raise UserError(f"--exclude left no image of class {quoted(name)} in {root}; list fewer of them in "
                                "--exclude, or remove the class folder there")
            raise UserError(f"no image of class {quoted(name)} in {root} could be decoded "
                            "(each is named in a warning above); replace them or remove the class folder there")
    return subsets


def _without_excluded(cfg: CompareConfig, folders: Folders, subsets: dict[str, list[LabelledImage]]
                      ) -> dict[str, list[LabelledImage]]:
    """--exclude after the split, so the same seed draws the same split with or without it: training and
    validation lose what is listed, test is unchanged (a paired comparison on test). An excluded test image
    is refused: the test set is never edited by a choice."""
    if not cfg.exclude:
        return subsets | {"excluded": []}
    excluded = tuple(Path(p) for p in cfg.exclude)
    check_excluded_known(excluded, {im.path for im in _all_images(folders)}, str(folders.train.root))
    gone = set(excluded)
    in_test = [im for im in subsets["test"] if im.path in gone]
    if in_test:
        raise UserError(f"--exclude names {quoted(in_test[0].path)}, a test image ({len(in_test)} in all): the test "
                        "set is read once and never edited; remove test images from the list (an audit never names "
                        "them: audit with the same --seed and fractions)")
    kept = {name: [im for im in members if im.path not in gone] for name, members in subsets.items()}
    return kept | {"excluded": [im for name in ("train", "val") for im in subsets[name] if im.path in gone]}


def subset_of(decoded: DecodedImages, keep: list[LabelledImage]) -> DecodedImages:
    """The decoded rows of `keep`, in its order; an image listed twice is there twice (a study repeats small
    subsets to keep the number of optimisation steps fixed)."""
    index = {im.path: i for i, im in enumerate(decoded.images)}
    rows = [index[im.path] for im in keep if im.path in index]
    return DecodedImages(images=[decoded.images[i] for i in rows],
                         content_keys=[decoded.content_keys[i] for i in rows],
                         pixels=decoded.pixels.subset(np.array(rows, dtype=np.int64)), skipped=[])


def _absolute(path: Path) -> Path:
    """Absolute without following symlinks: a linked image keeps its place in the class folder."""
    return Path(os.path.abspath(path))


def _leakage(train: DecodedImages, val: DecodedImages, dedupe: bool, subset: str) -> tuple[list[int], dict]:
    """Positions in `val` (validation or test) that duplicate training images, and the report's summary."""
    leak = find_leakage(train.content_keys, train.pixels, val.content_keys, val.pixels)
    summary = {"exact_duplicates": len(leak.exact), "near_duplicates": len(leak.near), "dropped": dedupe,
               "examples": [str(val.images[i].path) for i in leak.all[:10]]}
    if leak.all:
        what = "validation" if subset == "val" else subset
        warnings.warn(f"{len(leak.exact)} {what} images are exact and {len(leak.near)} near duplicates of "
                      f"training images (e.g. '{summary['examples'][0]}'); "
                      + (f"dropped from {what} (--dedupe)" if dedupe else f"{what} accuracy is optimistic; "
                         "use --dedupe to drop them"), stacklevel=4)
    return leak.all, summary


def prepare_data(cfg: CompareConfig, folders: Folders, prep: Preprocessing, run_dir: Path, ranks: Ranks = SINGLE,
                 data_changed_fix: str = RESUME_FIX, read_only: bool = False) -> PreparedData:
    """The split saved in run_dir/split.json (a resumed run, a study's re-run), or a new one drawn and saved.
    Every rank of a torchrun job draws the same split (it is seeded); only rank 0 writes split.json, and a
    `read_only` caller (a study's Ray worker: the driver writes) never does.
    `data_changed_fix`: what to do when the data differs from a saved split.json (a study: another --study-dir)."""
    writes_split = ranks.is_main and not read_only
    cache_dir = Path(cfg.cache_dir or default_cache_dir())
    roots = [_absolute(folder.root) for folder in folders.all]
    root = roots[0] if len(roots) == 1 else Path(os.path.commonpath(roots))
    images = _all_images(folders)
    split_path = run_dir / "split.json"
    seed, fraction = cfg.seed, (cfg.val_fraction if folders.val is None else None)
    if folders.decoded is None or folders.decoded_as != prep.geometry_key():  # not decoded yet, or for another size
        folders = decode_folders(cfg, folders, prep, cache_dir, ranks)
    decoded = folders.decoded
    resuming = split_path.exists()
    if resuming:
        subsets = apply_saved_split(split_path, root, images, data_changed_fix)
        for name in ("val", "test"):  # --dedupe finds and drops them again, identically
            subsets[name] += subsets.pop(f"dropped_{name}")
    else:
        subsets = check_enough_per_class(cfg, folders)  # of the usable images; the others are listed as skipped
        if writes_split:
            save_split(split_path, root, subsets, seed=seed, val_fraction=fraction,
                       skipped={s.path: s.reason for s in decoded.skipped})

    # one order for a first run and a resume alike (a resume finds files in scan order): the batches match
    subsets = {name: sorted(members, key=lambda im: (im.label, str(im.path))) for name, members in subsets.items()}
    content = {im.path: key for im, key in zip(decoded.images, decoded.content_keys)}
    if resuming:
        check_content_unchanged(split_path, root, content, data_changed_fix)

    has_test = folders.test is not None or cfg.test_fraction > 0
    split = Split(subset_of(decoded, subsets["train"]), subset_of(decoded, subsets["val"]),
                  subset_of(decoded, subsets["test"]) if has_test else None, folders.train.class_names,
                  [p for folder in folders.all for p in folder.ignored_files])
    leaked, leakage = _leakage(split.train, split.val, cfg.dedupe, "val")
    dropped = {"val": [split.val.images[i] for i in leaked] if cfg.dedupe else [], "test": []}
    split.val = subset_of(split.val, [im for im in split.val.images if im not in set(dropped["val"])])
    if dropped["val"] and not split.val.images:
        raise UserError(f"--dedupe dropped every validation image ({len(dropped['val'])}): each is a copy of a "
                        "training image; give validation images that are not in the training data, or drop --dedupe")
    prepared = PreparedData(split=split, skipped=decoded.skipped, leakage=leakage, split_path=split_path, root=root,
                            subsets=subsets, content=content, dropped=dropped, decoded=decoded,
                            writes_split=writes_split)
    _save(prepared, cfg)
    return prepared


def screen_test_set(prepared: PreparedData, cfg: CompareConfig,
                    trained_on: DecodedImages | None = None) -> DecodedImages:
    """The test set, checked for copies of what was trained on (the training images, or train + validation
    after a final fit) only now, at the end, when it is first read."""
    test = prepared.split.test
    leaked, prepared.leakage["test"] = _leakage(trained_on or prepared.split.train, test, cfg.dedupe, "test")
    if cfg.dedupe and leaked:
        prepared.dropped["test"] = [test.images[i] for i in leaked]
        _save(prepared, cfg)
    return subset_of(test, [im for im in test.images if im not in set(prepared.dropped["test"])])


def _save(prepared: PreparedData, cfg: CompareConfig) -> None:
    if not prepared.writes_split:
        return
    gone = {im for members in prepared.dropped.values() for im in members}
    subsets = {name: [im for im in members if im not in gone] for name, members in prepared.subsets.items()}
    save_split(prepared.split_path, prepared.root,
               subsets | {f"dropped_{name}": members for name, members in prepared.dropped.items()},
               seed=cfg.seed, val_fraction=cfg.val_fraction if cfg.data_dir else None, content=prepared.content,
               skipped={s.path: s.reason for s in prepared.skipped})


def _initial_split(cfg: CompareConfig, folders: Folders, images: list[LabelledImage]
                   ) -> dict[str, list[LabelledImage]]:
    """Stratified and seeded when the split is made here; the explicit folders otherwise."""
    in_folder = lambda folder: [im for im in images if _absolute(folder.root) in im.path.parents]  # noqa: E731
    test = in_folder(folders.test) if folders.test else []
    if folders.val is not None:
        return {"train": in_folder(folders.train), "val": in_folder(folders.val), "test": test}
    train, val, fraction_test = split_stratified(in_folder(folders.train), cfg.val_fraction, cfg.seed,
                                                 cfg.test_fraction)
    return {"train": train, "val": val, "test": test or fraction_test}


def labels_of(decoded: DecodedImages) -> np.ndarray:
    return np.array([im.label for im in decoded.images], dtype=np.int64)


def class_weights_for(labels: np.ndarray, n_classes: int) -> tuple[float, ...]:
    """Inverse class frequency, scaled so a balanced dataset gets all ones."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return tuple(float(w) for w in weights)
