"""The before/after table, as Markdown (report, terminal) from results.json."""

from transferlab.reporting.time_to_accuracy import time_to_accuracy_line, time_to_scratch_best
from transferlab.results import PhaseResult, RunResult
from transferlab.training.stopping import GAIN_WINDOW, MIN_GAIN

PHASE_LABELS = {"scratch": "scratch (before)", "frozen": "pretrained, frozen", "finetuned": "fine-tuned",
                "final": "final fit (train + val)"}
PHASE_ORDER = ("scratch", "frozen", "finetuned")  # the phases of every cell; compare may add "final"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


ENDED_BY = {"plateau": "plateau", "budget": "time budget", "epochs": "epoch cap"}


def comparison_table(results: RunResult) -> str:
    """Balanced accuracy gets a column when the classes are imbalanced (where plain accuracy flatters)."""
    balanced = results.data.imbalanced
    has_test = results.data.n_test > 0
    columns = ["model", "train acc", "val acc"] + (["balanced val acc"] if balanced else []) + \
        (["test acc"] if has_test else []) + (["balanced test acc"] if has_test and balanced else []) + \
        ["gap (train−val)", "kept epoch", "ended by", "input px", "trainable params", "seconds"]
    rows = ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    phases = results.phases
    for name in (*PHASE_ORDER, "final"):
        if name not in phases:
            continue
        p = phases[name]
        gap = "–" if p.gap is None else f"{100 * p.gap:+.1f} pts"
        cells = [PHASE_LABELS[name], _pct(p.train_acc), _pct(p.val_acc)] + \
            ([_pct(p.balanced_val_acc)] if balanced else []) + ([_pct(p.test_acc)] if has_test else []) + \
            ([_pct(p.balanced_test_acc)] if has_test and balanced else []) + \
            [gap, f"{p.best_epoch}/{len(p.epochs)}", ENDED_BY.get(p.stopped, "–"),
             str(input_size_px(results.recipe, results.preprocessing["image_size_px"], name)),
             f"{p.trainable_parameters:,}", f"{p.seconds:.1f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def verdict_lines(results: RunResult) -> list[str]:
    v = results.verdict
    mark = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    final = results.final_fit
    chosen = final.of if final else results.model_phase
    model = (f"{PHASE_LABELS[chosen]}, chosen on validation"
             + (f", then fitted again on train + validation ({final.n_train} images)" if final else ""))
    subset = v.subset
    lines = [f"- {subset} accuracy of the kept model ({model}) {_pct(v.acc)} vs target "
             f"{_pct(v.target_acc)}: **{mark(v.target_met)}**"]
    if final and subset == "validation":
        lines.append("- the saved model is the final fit, which trained on the validation images: this number is "
                     "the model validation chose, before the final fit")
    if subset == "validation":
        lines.append(f"- no test set: this validation accuracy also chose the epochs and the model, so it is "
                     f"optimistic (the kept epoch beat the last one by {100 * (v.val_optimism or 0):+.1f} pts); "
                     "give --test DIR or --test-fraction for an unbiased number")
    lines.append(f"- transfer time {v.transfer_seconds:.0f} s (decode + frozen + fine-tune"
                 f"{' + final fit' if final else ''}) vs budget "
                 f"{v.time_budget_seconds:.0f} s: **{mark(v.time_target_met)}**")
    phases = results.phases
    if "scratch" in phases:
        # both trained on the training images only
        best, scratch = phases[chosen].accuracy_on(subset), phases["scratch"].accuracy_on(subset)
        lines.append(f"- transfer vs scratch, both on the training images: {_pct(best)} vs {_pct(scratch)} "
                     f"{subset} accuracy ({100 * (best - scratch):+.1f} pts), "
                     f"{phases['frozen'].seconds + phases['finetuned'].seconds:.0f} s vs "
                     f"{phases['scratch'].seconds:.0f} s{scratch_ending(phases['scratch'], best > scratch)}")
        to_scratch_best = time_to_scratch_best(phases, results.decode_seconds, chosen)
        if to_scratch_best is not None:
            lines.append(time_to_accuracy_line(to_scratch_best))
    return lines


def scratch_ending(scratch: PhaseResult, transfer_ahead: bool = True) -> str:
    """How the baseline ended, in the same line as any gain quoted over it."""
    gain = scratch.recent_val_gain
    if scratch.stopped == "plateau":
        return f"; scratch stopped on a validation plateau (epoch {len(scratch.epochs)})"
    if scratch.stopped in ("budget", "epochs") and gain is not None and gain >= MIN_GAIN:
        return (f"; scratch was cut by its {ENDED_BY[scratch.stopped]} while still improving ({100 * gain:+.1f} pts "
                f"of smoothed validation accuracy over its last {GAIN_WINDOW} epochs)"
                + (", so this gap overstates what transfer adds" if transfer_ahead else ""))
    if scratch.stopped in ("budget", "epochs") and gain is not None:
        return (f"; scratch had stopped improving when its {ENDED_BY[scratch.stopped]} ended it "
                f"({100 * gain:+.1f} pts over its last {GAIN_WINDOW} epochs)")
    return ""


def input_size_px(recipe: dict, size_px: int, phase: str) -> int:
    """The input size a phase saw: the transfer models' size, or the recipe's scratch size for scratch (older
    results have no such field)."""
    return (recipe.get("scratch_image_size_px") or size_px) if phase == "scratch" else size_px


def recipe_line(results: RunResult) -> str:
    r = results.recipe  # a dict: the recipe's fields are declared in training/recipes.py
    changed = f" (overridden: {', '.join(r['overridden'])})" if r.get("overridden") else ""
    scratch = f"; scratch {r['scratch_epochs']} epochs at {r['scratch_lr']:g}" if "scratch" in results.phases else ""
    return (f"Recipe `{r['name']}`{changed}: frozen {r['frozen_epochs']} epochs at {r['frozen_lr']:g}, then "
            f"fine-tune `{r['unfreeze']}` for {r['finetune_epochs']} epochs at {r['finetune_lr']:g} "
            f"({r['optimizer']}, {r['schedule']} schedule, label smoothing {r['label_smoothing']:g}, head dropout "
            f"{r['head_dropout']:g}, augmentation {'on' if r['augment'] else 'off'}, "
            f"{'best-validation' if r['keep_best_epoch'] else 'last'} epoch kept){scratch}"
            f"{'; the kept pipeline then fitted again on train + validation' if r.get('final_fit') else ''}.")
