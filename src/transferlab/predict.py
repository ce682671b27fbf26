"""Use a saved model: class probabilities for new images, and accuracy on a labelled folder."""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferlab.data.images import ImageDecodeError, load_for_model
from transferlab.data.scan import IMAGE_SUFFIXES, scan_image_folder
from transferlab.errors import UserError, one_line, quoted
from transferlab.models.saved import load_model
from transferlab.training.inputs import normalise
from transferlab.training.metrics import balanced_accuracy, confusion_matrix, per_class_recall

BATCH_SIZE = 32


@dataclass(frozen=True)
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class name, probability), most likely first


def _expand(paths: list[Path]) -> list[Path]:
    """Folders expand to the images inside them, in a stable order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists():
            files.append(p)
        else:
            raise UserError(f"image {quoted(p)} does not exist; check the path")
    if not files:
        raise UserError(f"no images found in {', '.join(map(quoted, paths))} (suffixes "
                        f"{'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)}); give image files or folders of them")
    return files


Decoded = tuple[list[Path], np.ndarray, list[tuple[Path, str]]]  # kept paths, their probabilities, skipped


@torch.no_grad()
def _probabilities(model, prep, paths: list[Path], where: str) -> Decoded:
    """Decoded exactly as training decoded (model.json's preprocessing), one batch in memory at a time.

    A file that fails is skipped with a warning naming it, as compare does; nothing decodable is an error.
    """
    kept, probs, skipped = [], [], []
    for start in range(0, len(paths), BATCH_SIZE):
        pixels = []
        for path in paths[start:start + BATCH_SIZE]:
            try:
                pixels.append(load_for_model(path, prep))
                kept.append(path)
            except ImageDecodeError as e:
                skipped.append((path, str(e)))
                warnings.warn(f"skipping {quoted(path)}: {one_line(str(e))}", stacklevel=3)
        if pixels:
            x = normalise(torch.from_numpy(np.stack(pixels)), prep)
            probs.append(torch.softmax(model(x), dim=1).numpy())
    if not kept:
        raise UserError(f"none of the {len(paths)} images {where} could be decoded (each is named in a warning "
                        "above); give Pillow-readable images")
    return kept, np.concatenate(probs), skipped


def _load(run_dir: Path, onnx: bool):
    """The run's PyTorch model, or its ONNX export (`transferlab export`) run by ONNX Runtime."""
    if onnx:
        from transferlab.deploy import load_onnx_model  # ONNX Runtime is imported only when asked for
        return load_onnx_model(run_dir)
    return load_model(run_dir)


def predict(run_dir: Path, images: list[Path], top_k: int = 3, onnx: bool = False) -> list[Prediction]:
    """The top_k classes of each image (fewer when the model has fewer); undecodable files are skipped."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1 (got {top_k})")
    paths = _expand(images)
    model, meta = _load(run_dir, onnx)
    names = meta["class_names"]
    kept, probs, _ = _probabilities(model, meta["preprocessing"], paths, "given")
    k = min(top_k, len(names))
    return [Prediction(path, [(names[i], float(p[i])) for i in np.argsort(-p)[:k]]) for path, p in zip(kept, probs)]


def evaluate_folder(run_dir: Path, labelled_dir: Path, onnx: bool = False) -> dict:
    """Accuracy, per-class recall and the confusion matrix on DIR/<class>/*, classes named as in training."""
    model, meta = _load(run_dir, onnx)
    names = meta["class_names"]
    folder = scan_image_folder(labelled_dir, class_names=tuple(names))
    label_of = {im.path: im.label for im in folder.images}
    kept, probs, skipped = _probabilities(model, meta["preprocessing"], [im.path for im in folder.images],
                                          f"in {quoted(labelled_dir)}")
    labels = np.array([label_of[p] for p in kept])
    predicted = probs.argmax(1)
    recall = {names[c]: r for c, r in per_class_recall(labels, predicted, len(names)).items()}
    return {"n_images": len(kept), "accuracy": float((predicted == labels).mean()),
            "balanced_accuracy": balanced_accuracy(labels, predicted, len(names)),
            "per_class_recall": recall, "class_names": names,
            "confusion_matrix": confusion_matrix(labels, predicted, len(names)),
            "skipped": [{"path": str(p), "reason": r} for p, r in skipped]}
