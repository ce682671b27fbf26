"""The images that hurt: wrong labels, outliers and copies among train + validation (never test).

Labels: out-of-fold class probabilities from a K-fold linear probe on the pretrained backbone's last three feature
levels (timm's `forward_intermediates`, each averaged over space; run like the frozen pass, on ONNX Runtime on a
CPU; cached per image), then cleanlab's confident learning (`find_label_issues`) decides which given labels to
doubt and `get_label_quality_scores` ranks them.
Outliers: scikit-learn's LocalOutlierFactor on the same features. Copies: the same bytes twice in the pool,
and validation images that re-encode a training one (data/leakage.py, the check every run makes).
"""

import csv
import io
import time
import warnings
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from transferlab.atomic import write_json_atomic, write_text_atomic
from transferlab.data.decoded import DecodedImages
from transferlab.data.fingerprints import key_digest
from transferlab.data.images import Preprocessing
from transferlab.data.leakage import find_leakage
from transferlab.data.row_store import RowStore, RowView
from transferlab.errors import UserError
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.datasets import (check_enough_per_class, decode_folders, labels_of, prepare_data,
                                              scan_folders)
from transferlab.experiments.phases import check_input_size, with_input_sizes
from transferlab.experiments.run_dir import check_output_folders, default_cache_dir, new_run_dir
from transferlab.models.backbones import PretrainedBackbone, load_backbone
from transferlab.models.transfer_model import HeadConfig, TransferModel, pooled_features
from transferlab.progress import progress_bar
from transferlab.results import AuditIssue, AuditResult
from transferlab.reporting.audit_report import write_audit_report
from transferlab.results_io import to_json
from transferlab.training.devices import resolve_device
from transferlab.training.engines import PixelsToOutputs, computed_by, pass_runner, resolve_engine

FOLDS = 5  # cleanlab's own default for out-of-sample probabilities (cv_n_folds)
# the probe's inverse L2 strength on standardised features: measured on the embedded set's 1,000 train + val
# images (Lite0, 224 px), out-of-fold accuracy 78.1 % at 0.01 vs 75.3 % at 0.1 (5 % labels flipped)
PROBE_C = 0.01
# The probe reads the last three of timm's feature levels, each averaged over space, not only the pooled
# features: measured (5-fold probe, 3 seeds, 5 % labels flipped, Lite0 at 224 px), precision at recall 0.8 rose
# from 0.37 to 0.50 on the embedded garments and from 0.56 to 0.84 on scikit-learn's digits, and the clean digits
# got 3 doubts instead of 18: small images keep shape detail in the middle of the network that the last layers drop.
FEATURE_LEVELS = 3
FEATURES_LAYOUT = "audit-levels-v1"  # bump when what a cached row holds changes
OUTLIER_NEIGHBOURS = 20  # scikit-learn's default for LocalOutlierFactor
REASONS = ("label", "outlier", "duplicate")
CSV_COLUMNS = tuple(f.name for f in fields(AuditIssue))
SINGLE_IMAGE_CLASS = ("a class has a single image in train + validation: an out-of-fold probe needs at least two per "
                      "class; add images to it or remove the class folder")


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds: int, seed: int
                              ) -> tuple[np.ndarray, int]:
    """Each image's class probabilities from a probe that never saw it; (probabilities, folds used): a class
    with fewer images than `folds` lowers it, to at least 2."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(labels).min())
    used = min(folds, smallest)
    if used < 2:
        raise UserError(SINGLE_IMAGE_CLASS)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=1000))
    probabilities = cross_val_predict(probe, features, labels, method="predict_proba",
                                      cv=StratifiedKFold(used, shuffle=True, random_state=seed))
    return probabilities, used


def label_issues(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is doubted, label quality in 0..1: low = likely wrong), by confident learning."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    doubted = find_label_issues(labels, probabilities, n_jobs=1)
    return doubted, get_label_quality_scores(labels, probabilities)


def outliers(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is an outlier, score in 0..1: low = far from its neighbours), by the local outlier factor."""
    from sklearn.neighbors import LocalOutlierFactor

    lof = LocalOutlierFactor(n_neighbors=min(OUTLIER_NEIGHBOURS, len(features) - 1), metric="cosine")
    flagged = lof.fit_predict(features) == -1
    return flagged, 1.0 / np.maximum(-lof.negative_outlier_factor_, 1.0)


def duplicates(train: DecodedImages, val: DecodedImages) -> dict[int, str]:
    """Pool position (train first, then validation) -> the file it copies: the same bytes as an earlier image,
    or a validation image that re-encodes or resizes a training one."""
    pool = train.images + val.images
    first: dict[str, int] = {}
    copies = {}
    for i, key in enumerate(train.content_keys + val.content_keys):
        if key in first:
            copies[i] = str(pool[first[key]].path)
        else:
            first[key] = i
    near = find_leakage(train.content_keys, train.pixels, val.content_keys, val.pixels).near
    return copies | {len(train.images) + i: "a training image (near copy)" for i in near}


def audit_pool(features: np.ndarray, train: DecodedImages, val: DecodedImages, class_names: tuple[str, ...],
               folds: int = FOLDS, seed: int = 0, feature_text: str = "") -> AuditResult:
    """The audit of train + validation from their audit features (rows: train, then validation)."""
    started = time.perf_counter()
    pool = train.images + val.images
    labels = np.concatenate([labels_of(train), labels_of(val)])
    subset = ["train"] * len(train.images) + ["val"] * len(val.images)
    features = np.asarray(features, dtype=np.float32)
    probabilities, used = out_of_fold_probabilities(features, labels, folds, seed)
    suggested = probabilities.argmax(axis=1)
    doubted, quality = label_issues(labels, probabilities)
    far, typicality = outliers(features)

    def issue(i: int, score: float, reason: str, detail: str = "") -> AuditIssue:
        return AuditIssue(file=str(pool[i].path), subset=subset[i], given=class_names[labels[i]],
                          suggested=class_names[suggested[i]], score=round(float(score), 4), reason=reason,
                          detail=detail)
    found = {
        "label": [issue(i, quality[i], "label") for i in np.flatnonzero(doubted)],
        "outlier": [issue(i, typicality[i], "outlier") for i in np.flatnonzero(far)],
        "duplicate": [issue(i, 0.0, "duplicate", of) for i, of in sorted(duplicates(train, val).items())],
    }
    return AuditResult(n_images=len(pool), folds=used,
                       probe_accuracy=float((suggested == labels).mean()),
                       counts={reason: len(found[reason]) for reason in REASONS},
                       issues=[i for reason in REASONS for i in sorted(found[reason], key=lambda x: x.score)],
                       seconds=time.perf_counter() - started, features=feature_text)


def has_feature_levels(backbone: nn.Module) -> bool:
    return hasattr(backbone, "forward_intermediates")


def feature_levels(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C) the last FEATURE_LEVELS feature maps of `x`, each averaged over space, side by side; a backbone
    timm gives no intermediates keeps its pooled features."""
    if not has_feature_levels(backbone):
        return pooled_features(backbone, x)
    maps = backbone.forward_intermediates(x, indices=FEATURE_LEVELS, intermediates_only=True)
    return torch.cat([m.float().mean(dim=(2, 3)) for m in maps], dim=1)


def audit_features(backbone: nn.Module, parts: list[DecodedImages], prep: Preprocessing, cache_root: Path,
                   model_key: str, device: torch.device, engine: str = "auto", show_progress: bool = False,
                   batch_size: int = 64) -> np.ndarray:
    """`feature_levels` of every image of `parts`, side by side in their order, computed only for the images the
    cache lacks, by one runner on `engine` as the frozen pass runs (ONNX Runtime on CPU, checked against PyTorch;
    bf16 autocast on a GPU that has it); `model_key` names the backbone and its weights. The backbone's
    train/eval flags are put back."""
    size = prep.image_size_px
    engine = resolve_engine(engine, device)
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        with torch.no_grad():
            width = feature_levels(backbone, torch.zeros(1, 3, size, size, device=device)).shape[1]
        store = RowStore(Path(cache_root) / "audit" / key_digest(
            FEATURES_LAYOUT, FEATURE_LEVELS, model_key, prep.to_dict(), *computed_by(engine, device),
            timm.__version__, torch.__version__), (width,), "float32")
        run = None  # built once, and only if some image is missing: a warm cache exports nothing
        for images in parts:
            missing = store.missing(images.content_keys)
            if not missing:
                continue
            if run is None:
                run = pass_runner(PixelsToOutputs(backbone, lambda network, x: [feature_levels(network, x)], prep),
                                  ["levels"], prep, device, engine, cache_root, model_key, FEATURES_LAYOUT,
                                  FEATURE_LEVELS)
            position_of = {k: i for i, k in enumerate(images.content_keys)}
            positions = np.array([position_of[k] for k in missing])
            rows = [run(torch.from_numpy(images.pixels[chunk]))[0].float().cpu().numpy()
                    for chunk in progress_bar([positions[i:i + batch_size]
                                               for i in range(0, len(positions), batch_size)],
                                              desc="audit features", unit="batch", leave=False, show=show_progress)]
            store.add(missing, np.concatenate(rows))
    finally:
        for module, training in modes.items():
            module.training = training
    keys = [k for images in parts for k in images.content_keys]
    view = store.rows(keys)
    return view[np.arange(len(view))]


def feature_source(pretrained: PretrainedBackbone) -> str:
    levels = (f"last {FEATURE_LEVELS} feature levels, each averaged"
              if has_feature_levels(pretrained.module) else "pooled")
    return f"{pretrained.name}, {pretrained.preprocessing.image_size_px} px, {levels}, pretrained"


def pool_features(pretrained: PretrainedBackbone, train: DecodedImages, val: DecodedImages, cache_root: Path,
                  device: torch.device, engine: str, show_progress: bool = False) -> np.ndarray:
    """Train's then validation's audit features as one array (the order audit_pool expects)."""
    return audit_features(pretrained.module, [train, val], pretrained.preprocessing, cache_root, pretrained.cache_key,
                          device, engine, show_progress)


def audit_cell(pretrained: PretrainedBackbone, train: DecodedImages, val: DecodedImages,
               class_names: tuple[str, ...], cache_root: Path, device: torch.device, engine: str, seed: int
               ) -> AuditResult | None:
    """compare's Audit section, made before training changes the backbone; on a warm cache only the probe and
    cleanlab cost anything. Data too small for an out-of-fold probe gets a warning and no section, never a
    failed run."""
    try:
        return audit_pool(pool_features(pretrained, train, val, cache_root, device, engine), train, val, class_names,
                          FOLDS, seed, feature_source(pretrained))
    except UserError as e:
        warnings.warn(f"no audit: {e}", stacklevel=2)
        return None


def issues_csv(result: AuditResult) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for issue in result.issues:
        writer.writerow([getattr(issue, column) for column in CSV_COLUMNS])
    return out.getvalue()


def run_audit(cfg: CompareConfig, folds: int | None = None) -> Path:
    """`transferlab audit`: the split compare would draw (same --seed and fractions), the audit features of
    train + validation (the shared cache: warm after a compare run on the same --engine), the audit; writes an
    audit folder with audit.csv, audit.json, split.json and report.md/html. Returns the folder."""
    folds = FOLDS if folds is None else folds
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= 20:
        raise UserError(f"--folds must be a whole number from 2 to 20 (got {folds})")
    cfg = replace(cfg.with_absolute_paths(), test_dir=None)  # a test folder is not even decoded
    folders = scan_folders(cfg)
    device = resolve_device(cfg.device)
    pretrained = load_backbone(cfg.backbone, cfg.weights, cfg.recipe.image_size_px)
    model = TransferModel(pretrained.module, len(folders.train.class_names), HeadConfig())
    check_input_size(model, pretrained)
    check_output_folders(cfg)
    cfg = replace(with_input_sizes(cfg, model, pretrained), backbone=pretrained.name,
                  cache_dir=(cfg.cache_dir or default_cache_dir()).expanduser().resolve())
    prep = pretrained.preprocessing
    folders = decode_folders(cfg, folders, prep, cfg.cache_dir)
    subsets = check_enough_per_class(cfg, folders)
    pool_labels = np.array([im.label for name in ("train", "val") for im in subsets[name]])
    fewest = np.bincount(pool_labels, minlength=len(folders.train.class_names)).min()
    if fewest < 2:  # before the audit folder exists
        raise UserError(SINGLE_IMAGE_CLASS)
    audit_dir = new_run_dir(cfg.runs_dir, "audit-" + (cfg.name or Path(cfg.data_dir or cfg.train_dir).name))
    split = prepare_data(cfg, folders, prep, audit_dir).split
    pretrained.module.to(device)
    features = pool_features(pretrained, split.train, split.val, cfg.cache_dir, device, cfg.engine,
                             cfg.show_progress)
    result = audit_pool(features, split.train, split.val, split.class_names, folds, cfg.seed,
                        feature_source(pretrained))
    write_text_atomic(audit_dir / "audit.csv", issues_csv(result))
    write_json_atomic(audit_dir / "audit.json", to_json(result))
    write_audit_report(audit_dir, result, str(cfg.data_dir or cfg.train_dir))
    return audit_dir
