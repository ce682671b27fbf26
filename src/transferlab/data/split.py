"""A stratified, seeded split that is written once (split.json) and reused by every phase and by --resume.

split.json is written right after the scan, before any expensive step, so a run stopped at any point can
be resumed on exactly the same images. After decoding, each file's content hash is added: a resume
refuses a dataset whose files were added, removed or changed since, naming the first such file.
"""

import json
from pathlib import Path

import numpy as np

from transferlab.atomic import local_path_text, write_json_atomic
from transferlab.data.scan import LabelledImage
from transferlab.errors import UserError, quoted

# dropped_*: validation or test images that duplicate training ones (--dedupe); excluded: named by --exclude
SUBSETS = ("train", "val", "test", "dropped_val", "dropped_test", "excluded")
# what a refused re-use of split.json tells the user to do; a study passes its own (another --study-dir)
RESUME_FIX = "start a new run instead of resuming"


def split_stratified(images: list[LabelledImage], val_fraction: float, seed: int, test_fraction: float = 0.0
                     ) -> tuple[list[LabelledImage], list[LabelledImage], list[LabelledImage]]:
    """Per class, a seeded shuffle; round(n * val_fraction) to validation (at least 1, leaving 1 to train),
    then round(n * test_fraction) of the rest to test. Returns (train, val, test).

    A class with a single image stays in training: it cannot be both learned and validated. Validation is
    drawn first, so adding a test split leaves the validation set of the same seed unchanged.
    """
    if not 0.0 < val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise UserError(f"--val-fraction ({val_fraction}) and --test-fraction ({test_fraction}) must be in [0, 1) "
                        "with room left for training")
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for label in sorted({im.label for im in images}):
        members = [im for im in images if im.label == label]
        order = rng.permutation(len(members))
        n_val = 0 if len(members) < 2 else min(max(1, round(len(members) * val_fraction)), len(members) - 1)
        n_test = 0 if test_fraction == 0 else min(max(1, round(len(members) * test_fraction)),
                                                  len(members) - n_val - 1)
        val += [members[i] for i in order[:n_val]]
        test += [members[i] for i in order[n_val:n_val + max(n_test, 0)]]
        train += [members[i] for i in order[n_val + max(n_test, 0):]]
    key = lambda im: (im.label, str(im.path))  # noqa: E731
    return sorted(train, key=key), sorted(val, key=key), sorted(test, key=key)


def save_split(path: Path, root: Path, subsets: dict[str, list[LabelledImage]], *, seed: int,
               val_fraction: float | None, content: dict[Path, str] | None = None,
               skipped: dict[Path, str] | None = None) -> None:
    """`content`: file -> content hash, once known; `skipped`: file -> why it could not be decoded."""
    relative = lambda p: str(Path(p).relative_to(root))  # noqa: E731
    files = {relative(im.path): name for name, members in subsets.items() for im in members}
    write_json_atomic(path, {
        "seed": seed, "val_fraction": val_fraction, "root": str(root),
        "files": dict(sorted(files.items())),
        "content": {relative(p): h for p, h in sorted((content or {}).items(), key=lambda kv: str(kv[0]))},
        "skipped": {relative(p): r for p, r in sorted((skipped or {}).items(), key=lambda kv: str(kv[0]))}})


def read_split(path: Path) -> dict:
    try:
        saved = json.loads(Path(path).read_bytes())  # UTF-8 whatever the locale
        if not isinstance(saved.get("files"), dict):
            raise ValueError("no 'files' mapping")
        return saved
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"split file {quoted(path)} cannot be read ({e}); start a new run instead of "
                        "resuming") from None


def apply_saved_split(path: Path, root: Path, images: list[LabelledImage], fix: str = RESUME_FIX
                      ) -> dict[str, list[LabelledImage]]:
    """Re-use a run's split.json: the same files in the same subsets, or a one-line refusal. A file that could
    not be decoded when the split was drawn is in no subset, only in "skipped"."""
    split = read_split(path)
    saved = {local_path_text(rel): subset for rel, subset in split["files"].items()}
    skipped = {local_path_text(rel) for rel in split.get("skipped") or {}}
    subsets: dict[str, list[LabelledImage]] = {name: [] for name in SUBSETS}
    seen = set()
    for im in images:
        rel = str(im.path.relative_to(root))
        subset = saved.get(rel)
        if subset is None and rel in skipped:
            continue
        if subset not in subsets:
            raise UserError(f"{quoted(im.path)} is not in {quoted(path)}: the data changed since the split was "
                            f"drawn; {fix}")
        subsets[subset].append(im)
        seen.add(rel)
    removed = sorted(set(saved) - seen)
    if removed:
        raise UserError(f"{quoted(Path(root) / removed[0])} was removed since the split was drawn ({len(removed)} "
                        f"files missing); restore it or {fix}")
    return subsets


def check_content_unchanged(path: Path, root: Path, content: dict[Path, str], fix: str = RESUME_FIX) -> None:
    """Refuse a resume when a file's bytes differ from when the run started (the first one is named)."""
    split = read_split(path)
    saved, skipped_before = ({local_path_text(rel): v for rel, v in (split.get(key) or {}).items()}
                             for key in ("content", "skipped"))
    for file, digest in sorted(content.items(), key=lambda kv: str(kv[0])):
        rel = str(Path(file).relative_to(root))
        if saved.get(rel, digest) != digest or rel in skipped_before:
            raise UserError(f"{quoted(file)} changed since the split was drawn; restore it or {fix}")
