"""Learning curves and the confusion matrix as PNG files (matplotlib, no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from transferlab.atomic import write_atomic  # noqa: E402
from transferlab.reporting.tables import PHASE_LABELS, PHASE_ORDER  # noqa: E402
from transferlab.reporting.time_to_accuracy import model_timelines  # noqa: E402
from transferlab.results import AuditIssue, RunResult  # noqa: E402


def _save(fig, path: Path) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_learning_curves(results: RunResult, path: Path) -> None:
    """Accuracy and loss per epoch; fine-tuning continues the frozen phase's epoch count."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    phases = results.phases
    offset = {"scratch": 0, "frozen": 0, "finetuned": len(phases["frozen"].epochs) if "frozen" in phases else 0}
    for i, name in enumerate(p for p in PHASE_ORDER if p in phases):
        epochs = phases[name].epochs
        x = [offset[name] + r["epoch"] for r in epochs]
        color = f"C{i}"
        for ax, key in ((ax_acc, "acc"), (ax_loss, "loss")):
            ax.plot(x, [r[f"train_{key}"] for r in epochs], "--", color=color, label=f"{PHASE_LABELS[name]} train")
            ax.plot(x, [r[f"val_{key}"] for r in epochs], "-o", color=color, ms=3, label=f"{PHASE_LABELS[name]} val")
    ax_acc.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.legend(fontsize=7)
    _save(fig, path)


def plot_accuracy_over_time(results: RunResult, path: Path) -> None:
    """Validation accuracy against wall-clock seconds since the run started (log axis), every model on one
    plot: how long until a model is this good (reporting/time_to_accuracy.py's clocks)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    lines = model_timelines(results.phases, results.decode_seconds)
    for name, points in lines.items():
        if name == "finetuned":  # it continues the frozen line: drawn from the frozen phase's last epoch on
            points = points[max(len(lines.get("frozen", [])) - 1, 0):]
        if points and name in PHASE_ORDER:
            ax.plot(*zip(*points), "-o", ms=3, color=f"C{PHASE_ORDER.index(name)}", label=PHASE_LABELS[name])
    ax.set(xscale="log", xlabel="seconds since the run started (log)", ylabel="validation accuracy", ylim=(0, 1))
    ax.legend(fontsize=7)
    _save(fig, path)


# Past these class counts the numbers, then the names, stop being readable and only cost time and memory
# (250 classes once took 92 s and 6.8 GB for an 11831 px PNG); results.json keeps the full matrix.
ANNOTATE_MAX_CLASSES = 30
TICK_LABELS_MAX_CLASSES = 60
MAX_FIGURE_INCHES = 18     # at 110 dpi: below ~2000 px a side, plus the (truncated) tick labels
MAX_LABEL_CHARS = 24


def confusion_plot_note(n_classes: int) -> str | None:
    """What the confusion-matrix PNG leaves out at this many classes, for the report; None when nothing."""
    if n_classes <= ANNOTATE_MAX_CLASSES:
        return None
    shown = "class names but no counts" if n_classes <= TICK_LABELS_MAX_CLASSES else "neither counts nor class names"
    return (f"With {n_classes} classes the plot shows {shown} (counts up to {ANNOTATE_MAX_CLASSES} classes, "
            f"names up to {TICK_LABELS_MAX_CLASSES}); the full matrix is in results.json.")


def _short_label(name: str) -> str:
    return name if len(name) <= MAX_LABEL_CHARS else name[:MAX_LABEL_CHARS - 1] + "…"


def plot_confusion_matrix(matrix: list[list[int]], class_names: list[str], title: str, path: Path) -> None:
    """Bounded in size whatever the class count: see confusion_plot_note."""
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(min(1.2 + 0.6 * n, MAX_FIGURE_INCHES), min(1 + 0.55 * n, MAX_FIGURE_INCHES)))
    ax.imshow(matrix, cmap="Blues")
    if n <= TICK_LABELS_MAX_CLASSES:
        labels = [_short_label(c) for c in class_names]
        ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= ANNOTATE_MAX_CLASSES:
        top = max(max(row) for row in matrix) or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, matrix[i][j], ha="center", va="center", fontsize=7,
                        color="white" if matrix[i][j] > top / 2 else "black")
    _save(fig, path)


def plot_data_efficiency(curves: dict[str, list[tuple[float, float, float | None]]], reference: float | None,
                         path: Path) -> None:
    """Test accuracy vs images per class (log axis): per method (x, mean, 95 % half-width or None)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(p for p in PHASE_ORDER if p in curves):
        x, mean, half = zip(*curves[name])
        ax.plot(x, mean, "-o", color=f"C{i}", ms=4, label=PHASE_LABELS[name])
        if any(h is not None for h in half):
            width = [h or 0.0 for h in half]
            ax.fill_between(x, [m - w for m, w in zip(mean, width)], [m + w for m, w in zip(mean, width)],
                            color=f"C{i}", alpha=0.2)
    if reference is not None:
        ax.axhline(reference, color="gray", ls="--", lw=1, label="scratch on all data (mean)")
    ax.set_xscale("log")
    ticks = sorted({x for points in curves.values() for x, _, _ in points})
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.minorticks_off()
    ax.set(xlabel="training images per class (log)", ylabel="test accuracy", ylim=(0, 1),
           title="data efficiency: mean and 95 % interval over seeds")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_time_to_accuracy(points: dict[str, list[tuple[float, float, str]]], path: Path) -> None:
    """Test accuracy vs wall-clock seconds per method: one point per (images per class), labelled."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(p for p in PHASE_ORDER if p in points):
        seconds, acc, labels = zip(*sorted(points[name]))
        ax.plot(seconds, acc, "o", color=f"C{i}", label=PHASE_LABELS[name])
        for s, a, label in zip(seconds, acc, labels):
            ax.annotate(label, (s, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set(xlabel="wall-clock seconds to train (log; frozen includes the feature cache)", ylabel="test accuracy",
           ylim=(0, 1), title="time to accuracy (means over seeds; labels: images per class)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_heatmap(values: list[list[float]], labels: list[list[str]], row_names: list[str], column_names: list[str],
                 xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """A small annotated grid (values in [0, 1]), e.g. test accuracy over unfrozen blocks x learning rate."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(column_names), 1.2 + 0.6 * len(row_names)))
    ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(column_names)), column_names)
    ax.set_yticks(range(len(row_names)), row_names)
    for i, row in enumerate(labels):
        for j, text in enumerate(row):
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if values[i][j] > 0.6 else "white")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    _save(fig, path)


AUDIT_THUMBNAILS = 12  # the top issues drawn in the report
THUMBNAIL_PX = 96


def plot_audit_thumbnails(issues: list[AuditIssue], path: Path) -> bool:
    """The first AUDIT_THUMBNAILS issues, each with its given and suggested class, read from the image files;
    False (nothing written) when none of them can be read any more."""
    from PIL import Image, UnidentifiedImageError

    from transferlab.atomic import local_path_text

    shown = []
    for issue in issues:
        if len(shown) == AUDIT_THUMBNAILS:
            break
        try:
            with Image.open(local_path_text(issue.file)) as image:
                image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                shown.append((issue, image.convert("RGB")))
        except (OSError, UnidentifiedImageError):
            continue
    if not shown:
        return False
    columns = min(len(shown), 6)
    rows = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (issue, image) in zip(axes.flat, shown):
        ax.imshow(image)
        ax.set_title(f"{issue.reason} {issue.score:.2f}\n{_short_label(issue.given)} → {_short_label(issue.suggested)}"
                     f"\n{Path(issue.file).name[-18:]}", fontsize=7)
    _save(fig, path)
    return True
