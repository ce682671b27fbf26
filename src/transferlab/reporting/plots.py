"""Learning curves and the confusion matrix as PNG files (matplotlib, no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from transferlab.atomic import write_atomic  # noqa: E402
from transferlab.reporting.tables import PHASE_LABELS, PHASE_ORDER  # noqa: E402


def _save(fig, path: Path) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_learning_curves(results: dict, path: Path) -> None:
    """Accuracy and loss per epoch; fine-tuning continues the frozen phase's epoch count."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    offset = {"scratch": 0, "frozen": 0, "finetuned": len(results["phases"].get("frozen", {}).get("epochs", []))}
    for i, name in enumerate(p for p in PHASE_ORDER if p in results["phases"]):
        epochs = results["phases"][name]["epochs"]
        x = [offset[name] + r["epoch"] for r in epochs]
        color = f"C{i}"
        for ax, key in ((ax_acc, "acc"), (ax_loss, "loss")):
            ax.plot(x, [r[f"train_{key}"] for r in epochs], "--", color=color, label=f"{PHASE_LABELS[name]} train")
            ax.plot(x, [r[f"val_{key}"] for r in epochs], "-o", color=color, ms=3, label=f"{PHASE_LABELS[name]} val")
    ax_acc.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.legend(fontsize=7)
    _save(fig, path)


def plot_confusion_matrix(matrix: list[list[int]], class_names: list[str], title: str, path: Path) -> None:
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1 + 0.55 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    top = max(max(row) for row in matrix) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, matrix[i][j], ha="center", va="center", fontsize=7,
                    color="white" if matrix[i][j] > top / 2 else "black")
    _save(fig, path)
