"""Find the labelled images in a folder-per-class tree, and say clearly what is wrong with it."""

import os
from dataclasses import dataclass
from pathlib import Path

from transferlab.errors import UserError, quoted

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # .jfif: Windows' JPEG
LAYOUT_HINT = "expected DIR/<class_name>/<images> with at least two class folders"
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int


@dataclass(frozen=True)
class ImageFolder:
    root: Path
    class_names: tuple[str, ...]
    images: tuple[LabelledImage, ...]
    ignored_files: tuple[Path, ...]  # files that are not images in a class folder, listed so nothing vanishes silently


def is_hidden(name: str) -> bool:
    """Dotfiles cover .DS_Store, macOS '._x.jpg' resource forks and .ipynb_checkpoints."""
    return name.startswith(".")


def label_of(folder: Path) -> str:
    """A class folder's name as a label, the same in every locale: under LC_ALL=C Python spells a UTF-8 name's
    bytes as surrogates, and a model trained under a UTF-8 locale must still recognise the folder."""
    return folder.name.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")


def _walk_class_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """Images anywhere below `folder`, in a stable order; symlinked folders are not followed (no loops)."""
    images, ignored = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            if is_hidden(name):
                continue
            path = Path(dirpath) / name
            (images if path.suffix.lower() in IMAGE_SUFFIXES else ignored).append(path)
    return images, ignored


def _has_sub_folders(folder: Path) -> bool:
    try:
        return any(p.is_dir() and not is_hidden(p.name) for p in folder.iterdir())
    except OSError:  # unreadable: the class scan says so
        return False


def check_not_split_folders(root: Path, folders: list[Path]) -> None:
    """DATA/train/<class>/…, DATA/val/<class>/… read as a data folder would train a classifier of which split an
    image came from: said in one line with the command that reads them as splits."""
    role = {name: split for split, names in SPLIT_FOLDERS.items() for name in names}
    splits = {role.get(p.name.lower()): p for p in folders}
    if None in splits or "train" not in splits or len(splits) < 2 or not all(map(_has_sub_folders, folders)):
        return
    test = f" --test {quoted(splits['test'])}" if "test" in splits else ""
    fix = (f"--train {quoted(splits['train'])} --val {quoted(splits['val'])}{test}" if "val" in splits
           else f"{quoted(splits['train'])} as the data folder and{test}")
    raise UserError(f"{quoted(root)} holds split folders ({', '.join(quoted(p.name) for p in folders)}), not "
                    f"classes; give {fix}")


def scan_image_folder(root: Path, class_names: tuple[str, ...] | None = None) -> ImageFolder:
    """Scan `root`; with `class_names` (a validation folder), labels follow the training classes."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"data folder {quoted(root)} does not exist; {LAYOUT_HINT}")
    if not root.is_dir():
        raise UserError(f"{quoted(root)} is a file, not a folder; {LAYOUT_HINT}")
    try:
        entries = sorted(p for p in root.iterdir() if not is_hidden(p.name))
    except PermissionError:
        raise UserError(f"cannot read folder {quoted(root)} (permission denied); fix its permissions") from None
    broken = [p for p in entries if p.is_symlink() and not p.exists()]
    if broken:  # maybe a class folder that moved: training without it would quietly drop a class
        raise UserError(f"{quoted(broken[0])} is a link to {quoted(os.readlink(broken[0]))}, which does not exist; "
                        "fix the link or remove it")
    folders = [p for p in entries if p.is_dir()]
    if not folders:
        loose = [p.name for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        found = f"{len(loose)} loose image files but no class folders" if loose else "no class folders"
        raise UserError(f"found {found} in {quoted(root)}; {LAYOUT_HINT}")

    found_names = tuple(label_of(p) for p in folders)
    if class_names is None:
        check_not_split_folders(root, folders)
        class_names = found_names
    else:
        unknown = sorted(set(found_names) - set(class_names))
        if unknown:
            raise UserError(f"{quoted(root)} has class folders {unknown} that the training data does not have "
                            f"(training classes: {list(class_names)}); rename or remove them")

    images: list[LabelledImage] = []
    ignored = [p for p in entries if not p.is_dir()]  # beside the class folders: no class to give them
    empty: list[str] = []
    for folder in folders:
        paths, others = _walk_class_folder(folder)
        ignored += others
        if not paths:
            empty.append(f"{quoted(folder.name)} ({len(others)} non-image files)" if others else quoted(folder.name))
        label = class_names.index(label_of(folder))
        images += [LabelledImage(p, label) for p in paths]

    if empty:
        raise UserError(f"class folders with no images in {quoted(root)}: {', '.join(empty)}; add images "
                        f"({'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)}) or remove those folders")
    if len(class_names) < 2:
        raise UserError(f"found only one class folder ({quoted(class_names[0])}) in {quoted(root)}; "
                        f"{LAYOUT_HINT}")
    return ImageFolder(root=root, class_names=tuple(class_names), images=tuple(images),
                       ignored_files=tuple(ignored))
