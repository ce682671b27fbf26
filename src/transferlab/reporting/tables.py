"""The before/after table, as Markdown (report, terminal) from results.json."""

PHASE_LABELS = {"scratch": "scratch (before)", "frozen": "pretrained, frozen", "finetuned": "fine-tuned"}
PHASE_ORDER = ("scratch", "frozen", "finetuned")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def comparison_table(results: dict) -> str:
    """Balanced accuracy gets a column when the classes are imbalanced (where plain accuracy flatters)."""
    balanced = results["data"].get("imbalanced", False)
    rows = ["| model | train acc | val acc |" + (" balanced val acc |" if balanced else "") +
            " gap (train−val) | best epoch | trainable params | seconds |",
            "|---|---:|---:|" + ("---:|" if balanced else "") + "---:|---:|---:|---:|"]
    phases = results["phases"]
    for name in PHASE_ORDER:
        if name not in phases:
            continue
        p = phases[name]
        gap = "–" if p["gap"] is None else f"{100 * p['gap']:+.1f} pts"
        rows.append(f"| {PHASE_LABELS[name]} | {_pct(p['train_acc'])} | {_pct(p['val_acc'])} | "
                    + (f"{_pct(p['balanced_val_acc'])} | " if balanced else "") + f"{gap} | "
                    f"{p['best_epoch']}/{len(p['epochs'])} | {p['trainable_parameters']:,} | {p['seconds']:.1f} |")
    return "\n".join(rows)


def verdict_lines(results: dict) -> list[str]:
    v = results["verdict"]
    mark = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines = [f"- val accuracy {_pct(v['val_acc'])} vs target {_pct(v['target_val_acc'])}: "
             f"**{mark(v['val_target_met'])}**",
             f"- transfer time {v['transfer_seconds']:.0f} s (decode + frozen + fine-tune) vs budget "
             f"{v['time_budget_seconds']:.0f} s: **{mark(v['time_target_met'])}**"]
    phases = results["phases"]
    if "scratch" in phases:
        best = max(phases[p]["val_acc"] for p in ("frozen", "finetuned"))
        lines.append(f"- transfer vs scratch: {_pct(best)} vs {_pct(phases['scratch']['val_acc'])} val accuracy "
                     f"({100 * (best - phases['scratch']['val_acc']):+.1f} pts), "
                     f"{phases['frozen']['seconds'] + phases['finetuned']['seconds']:.0f} s vs "
                     f"{phases['scratch']['seconds']:.0f} s")
    return lines
