"""Use a saved model: class probabilities for new images, and accuracy on a labelled folder.

Decoding, normalising and the softmax are NumPy: torch (with torchvision and timm, 4-6 s of imports on 2
cores) is imported only for the PyTorch model, so on the run's ONNX export (the default) the first answer
comes in under a second."""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from scipy.special import softmax

from transferlab.api_checks import check_flag, check_path, check_paths, check_whole_number
from transferlab.data.fingerprints import file_digest
from transferlab.data.images import ImageDecodeError, load_for_model, normalised_nchw
from transferlab.data.scan import IMAGE_SUFFIXES, scan_image_folder
from transferlab.data.split import read_split
from transferlab.errors import UserError, one_line, quoted
from transferlab.models.onnx_runtime import (AUTO_ONNX, Logits, export_fix, export_problem, has_export, has_model,
                                             load_onnx_model)
from transferlab.results import RESULTS_FILE
from transferlab.training.metrics import balanced_accuracy, confusion_matrix, per_class_recall

BATCH_SIZE = 32
MAX_BATCH_SIZE = 4096
MAX_TOP_K = 10_000


@dataclass(frozen=True)
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class name, probability), most likely first


def _expand(paths: list[Path]) -> list[Path]:
    """Folders expand to the images inside them, in a stable order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if not f.is_dir()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
            others = [f for f in inside if f.suffix.lower() not in IMAGE_SUFFIXES]
            if others:  # as compare lists them: nothing vanishes without a word
                what = ("1 file in {} is not an image by its suffix" if len(others) == 1 else
                        f"{len(others)} files in {{}} are not images by their suffix").format(quoted(p))
                warnings.warn(f"{what}, left out (e.g. {quoted(others[0])}); name an image file to classify it anyway",
                              stacklevel=3)
            files += [f for f in inside if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.exists():
            files.append(p)
        else:
            raise UserError(f"image {quoted(p)} does not exist; check the path")
    if not files:
        raise UserError(f"no images found in {', '.join(map(quoted, paths))} (suffixes "
                        f"{'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)}); give image files or folders of them")
    return files


Decoded = tuple[list[Path], np.ndarray, list[tuple[Path, str]]]  # kept paths, their probabilities, skipped


def _decode_batch(paths: list[Path], prep) -> tuple[list[Path], list[np.ndarray], list[tuple[Path, str]]]:
    """A file that fails is skipped with a warning naming it, as compare does. One thread: the model's
    forward already uses the cores (threads here measured no faster on a shared 2-core machine)."""
    kept, pixels, skipped = [], [], []
    for path in paths:
        try:
            pixels.append(load_for_model(path, prep))
            kept.append(path)
        except ImageDecodeError as e:
            skipped.append((path, str(e)))
            warnings.warn(f"skipping {quoted(path)}: {one_line(str(e))}", stacklevel=4)
    return kept, pixels, skipped


def _probability_batches(logits: Logits, prep, paths: list[Path], where: str, batch_size: int = BATCH_SIZE
                         ) -> Iterator[tuple[list[Path], np.ndarray, list[tuple[Path, str]]]]:
    """(kept paths, their probabilities, skipped files with why) per batch, as soon as each is done; decoded
    exactly as training decoded (model.json's preprocessing), one batch in memory at a time. The first image
    goes alone (0.05 s instead of 1 s for 32 at 224 px on 2 cores), so the first answer is out as soon as the
    model is loaded. Nothing decodable at all is an error, raised after the last batch."""
    n_kept = 0
    starts = [0, *range(1, len(paths), batch_size)] if paths else []
    for start, end in zip(starts, starts[1:] + [len(paths)]):
        kept, pixels, skipped = _decode_batch(paths[start:end], prep)
        probs = np.zeros((0, 0), np.float32)
        if pixels:
            probs = softmax(logits(normalised_nchw(np.stack(pixels), prep)), axis=1)
        n_kept += len(kept)
        yield kept, probs, skipped
    if not n_kept:
        raise UserError(f"none of the {len(paths)} images {where} could be decoded (each is named in a warning "
                        "above); give Pillow-readable images")


def _probabilities(logits: Logits, prep, paths: list[Path], where: str) -> Decoded:
    kept, probs, skipped = [], [], []
    for batch_kept, batch_probs, batch_skipped in _probability_batches(logits, prep, paths, where):
        kept += batch_kept
        probs += [batch_probs] if batch_kept else []
        skipped += batch_skipped
    return kept, np.concatenate(probs), skipped


def _load(run_dir: Path, onnx: bool | None) -> tuple[Logits, dict]:
    """(logits function, meta) of the run's ONNX export on ONNX Runtime (onnx=None: when the run holds one made
    from its model, as compare writes it) or of its PyTorch model (onnx=False, or no current export)."""
    problem = None
    if onnx is None and has_export(run_dir):
        problem = export_problem(run_dir)
        onnx = problem is None or not has_model(run_dir)  # an export on its own has no PyTorch model to fall back to
    if onnx:
        return load_onnx_model(run_dir)
    import torch

    from transferlab.models.saved import load_model
    model, meta = load_model(run_dir)  # a model that cannot load is the one line: no warning about the export first
    if problem:
        warnings.warn(f"{problem}; predicting with PyTorch (slower to start); {export_fix(run_dir)}", stacklevel=3)

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():  # here, not around a generator's yield: grad mode would leak into the caller
            return model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

    return logits, meta


@dataclass(frozen=True)
class PredictionStream:
    """Predictions batch by batch, for a caller that shows them as they come (the CLI streams them)."""
    n_files: int
    batches: Iterator[tuple[int, list[Prediction]]]  # (files read, predictions of those that decoded)


def predict_batches(run_dir: Path, images: list[Path] | Path, top_k: int = 3, onnx: bool | None = None,
                    batch_size: int = BATCH_SIZE) -> PredictionStream:
    """Arguments, images and the model are checked now; the batches are computed as they are iterated."""
    run_dir = check_path("predict", "run_dir", run_dir)
    paths = check_paths("predict", "images", images)
    top_k = check_whole_number("predict", "top_k (--top-k)", top_k, 1, MAX_TOP_K)
    onnx = check_flag("predict", "onnx (--onnx)", onnx, AUTO_ONNX)
    batch_size = check_whole_number("predict", "batch_size (--batch-size)", batch_size, 1, MAX_BATCH_SIZE)
    files = _expand(paths)
    logits, meta = _load(run_dir, onnx)
    names = meta["class_names"]
    k = min(top_k, len(names))

    def batches() -> Iterator[tuple[int, list[Prediction]]]:
        for kept, probs, skipped in _probability_batches(logits, meta["preprocessing"], files, "given", batch_size):
            yield len(kept) + len(skipped), [Prediction(path, [(names[i], float(p[i])) for i in np.argsort(-p)[:k]])
                                             for path, p in zip(kept, probs)]
    return PredictionStream(len(files), batches())


def predict(run_dir: Path, images: list[Path] | Path, top_k: int = 3, onnx: bool | None = None,
            batch_size: int = BATCH_SIZE) -> list[Prediction]:
    """The top_k classes of each image (fewer when the model has fewer); undecodable files are skipped.
    `images`: one path, or a list of image files and folders. `onnx`: True runs the export on ONNX Runtime,
    False the PyTorch model, None the export when the run holds a current one (compare writes it)."""
    return [p for _, batch in predict_batches(run_dir, images, top_k, onnx, batch_size).batches for p in batch]


def _learnt_from(run_dir: Path, paths: list[Path]) -> int:
    """How many of `paths` hold the content of an image the saved model trained on: split.json's training
    images, and its validation images too after a final fit. A run without those files counts none."""
    try:
        split = read_split(run_dir / "split.json")
        final_fit = json.loads((run_dir / RESULTS_FILE).read_bytes()).get("model_phase") == "final"
        subsets = {"train", "val"} if final_fit else {"train"}
        digests = {split["content"].get(f) for f, subset in split["files"].items() if subset in subsets} - {None}
    except (UserError, OSError, ValueError, KeyError, AttributeError, TypeError):  # damaged or older: says nothing
        return 0
    return sum(file_digest(p) in digests for p in paths)


def evaluate_folder(run_dir: Path, labelled_dir: Path, onnx: bool | None = None) -> dict:
    """Accuracy, per-class recall and the confusion matrix on DIR/<class>/*, classes named as in training."""
    run_dir = check_path("evaluate_folder", "run_dir", run_dir)
    labelled_dir = check_path("evaluate_folder", "labelled_dir", labelled_dir)
    onnx = check_flag("evaluate_folder", "onnx (--onnx)", onnx, AUTO_ONNX)
    logits, meta = _load(run_dir, onnx)
    names = meta["class_names"]
    folder = scan_image_folder(labelled_dir, class_names=tuple(names))
    missing = [name for c, name in enumerate(names) if all(im.label != c for im in folder.images)]
    if missing:  # balanced accuracy then averages the classes present: a number about fewer classes
        warnings.warn(f"{quoted(labelled_dir)} has no folder of class {', '.join(map(quoted, missing))}; the "
                      f"accuracies cover the other {len(names) - len(missing)} of the run's {len(names)} classes",
                      stacklevel=2)
    label_of = {im.path: im.label for im in folder.images}
    kept, probs, skipped = _probabilities(logits, meta["preprocessing"], [im.path for im in folder.images],
                                          f"in {quoted(labelled_dir)}")
    labels = np.array([label_of[p] for p in kept])
    learnt = _learnt_from(run_dir, kept)
    if learnt:
        warnings.warn(f"{learnt} of the {len(kept)} images in {quoted(labelled_dir)} are images this model learnt "
                      "from (their content is in its split.json); accuracy on them says little about new images",
                      stacklevel=2)
    predicted = probs.argmax(1)
    recall = {names[c]: r for c, r in per_class_recall(labels, predicted, len(names)).items()}
    return {"n_images": len(kept), "accuracy": float((predicted == labels).mean()),
            "balanced_accuracy": balanced_accuracy(labels, predicted, len(names)),
            "per_class_recall": recall, "class_names": names,
            "confusion_matrix": confusion_matrix(labels, predicted, len(names)),
            "skipped": [{"path": str(p), "reason": r} for p, r in skipped]}
