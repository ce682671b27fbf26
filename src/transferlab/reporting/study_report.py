"""report.md and a self-contained report.html for a study, from its results.json alone.

Every number carries its n (seeds); means come with 95 % t-intervals; a difference between methods is
claimed only when the paired interval over seeds excludes zero.
"""

from pathlib import Path

import numpy as np

from transferlab.atomic import write_text_atomic
from transferlab.reporting.plots import (plot_confusion_matrix, plot_data_efficiency, plot_heatmap,
                                         plot_time_to_accuracy)
from transferlab.reporting.data_claim import smallest_k_not_worse
from transferlab.reporting.learning_curve import BEYOND_FACTOR, check_extrapolation, images_needed
from transferlab.reporting.report import markdown_to_html
from transferlab.reporting.statistics import Estimate, mean_interval, paired_test
from transferlab.reporting.tables import ENDED_BY, PHASE_LABELS, PHASE_ORDER, input_size_px
from transferlab.results import CellPhaseResult, CellResult, StudyResult
from transferlab.results_io import read_study_results
from transferlab.training.metrics import confusion_matrix
from transferlab.training.stopping import GAIN_WINDOW, MIN_GAIN

COMPARISONS = (("finetuned", "scratch"), ("frozen", "scratch"), ("finetuned", "frozen"))


def _pct(e: Estimate) -> str:
    spread = f" ± {100 * e.half_width:.1f}" if e.half_width is not None else ""
    return f"{100 * e.mean:.1f}{spread} % (n={e.n})"


Methods = dict[str, dict[int, CellPhaseResult]]  # method -> seed -> that cell's phase


def _groups(cells: list[CellResult]) -> list[tuple[str, float, Methods]]:
    """(label, images per class, method -> seed -> phase summary), ordered by images per class."""
    groups: dict[float, tuple[str, Methods]] = {}
    for cell in cells:
        label, methods = groups.setdefault(cell.images_per_class, (str(cell.k), {}))
        for name, phase in cell.phases.items():
            methods.setdefault(name, {})[cell.seed] = phase
    return [(label, x, methods) for x, (label, methods) in sorted(groups.items())]


def _accuracy(methods: Methods, name: str) -> Estimate:
    return mean_interval([p.test_acc for _, p in sorted(methods[name].items())])


def _paired(methods: Methods, a: str, b: str):
    seeds = sorted(set(methods[a]) & set(methods[b]))
    return paired_test([methods[a][s].test_acc for s in seeds], [methods[b][s].test_acc for s in seeds])


def _test_acc(cells: list[CellResult], phase: str) -> Estimate:
    return mean_interval([c.phases[phase].test_acc for c in cells])


def data_efficiency_lines(cells: list[CellResult], target_acc: float | None = None) -> list[str]:
    groups = _groups(cells)
    rows = ["| images per class | k asked | " + " | ".join(PHASE_LABELS[p] for p in PHASE_ORDER) + " |",
            "|---:|---|" + "---:|" * len(PHASE_ORDER)]
    for label, x, methods in groups:
        rows.append(f"| {x:g} | {label} | " + " | ".join(_pct(_accuracy(methods, p)) if p in methods else "–"
                                                         for p in PHASE_ORDER) + " |")
    return rows + ["", *headline_lines(groups), *target_lines(groups, target_acc)]


def headline_lines(groups: list) -> list[str]:
    """The data claim, decided by a paired non-inferiority test over seeds (reporting/data_claim.py), and how
    many images each method needs to match scratch on all the data, from its learning curve
    (reporting/learning_curve.py) with that curve's out-of-sample check."""
    _, all_x, all_methods = groups[-1]
    scratch_all = {seed: p.test_acc for seed, p in all_methods["scratch"].items()}
    target = float(np.mean(list(scratch_all.values())))
    lines = []
    for method in ("finetuned", "frozen"):
        by_k = {("all" if x == all_x else x): {seed: p.test_acc for seed, p in m[method].items()}
                for _, x, m in groups if method in m}
        claim = smallest_k_not_worse(by_k, scratch_all)
        lines.append(f"- {claim.line(all_x, PHASE_LABELS[method])}"
                     f"{scratch_all_ending(list(all_methods['scratch'].values()), claim.smallest_k is not None)}.")
        per_seed: dict[int, dict[float, float]] = {}
        for _, x, m in groups:
            for seed, p in m.get(method, {}).items():
                per_seed.setdefault(seed, {})[x] = p.test_acc
        lines.append("  " + _images_needed_line(per_seed, target, f"scratch on all {all_x:g} per class"))
    return lines


def target_lines(groups: list, target_acc: float | None) -> list[str]:
    """How many images per class each method needs to reach the user's target accuracy, from its learning
    curve (a method trained at fewer than 4 ks has none)."""
    if target_acc is None:
        return []
    lines = []
    for method in ("finetuned", "frozen", "scratch"):
        per_seed: dict[int, dict[float, float]] = {}
        for _, x, m in groups:
            for seed, p in m.get(method, {}).items():
                per_seed.setdefault(seed, {})[x] = p.test_acc
        if per_seed:
            lines.append(f"- {PHASE_LABELS[method]}: {_images_needed_line(per_seed, target_acc, 'the target')}")
    return lines


def _images_needed_line(per_seed: dict[int, dict[float, float]], target: float, what: str) -> str:
    ks = sorted({k for curve in per_seed.values() for k in curve})
    if len(ks) < 4:
        return "(no learning curve: it needs at least 4 values of k, one of them held out to check the fit)"
    means = [float(np.mean([c[k] for c in per_seed.values() if k in c])) for k in ks]
    if means[0] >= target:  # the curve would only extrapolate below what was measured
        return (f"images needed to match {what} ({100 * target:.1f} %): at most {ks[0]:g} per class, reached "
                "already at the smallest k measured.")
    check = check_extrapolation(ks, means)
    needed = images_needed(per_seed, target)
    verdict = "it extrapolates" if check.holds else "it does NOT extrapolate, so neither does this estimate"
    held = (f"fitted without k = {check.held_out_k:g}, the curve predicts {_pct1(check.predicted)} there, measured "
            f"{_pct1(check.measured)}: {verdict}")
    if needed.estimate is None:
        estimate = f"beyond {BEYOND_FACTOR}× the {needed.largest_k:g} images per class you have"
    else:
        interval = ("" if needed.interval is None else
                    f" (95 % bootstrap over seeds {needed.interval[0]:.0f}–{needed.interval[1]:.0f})")
        estimate = f"about {needed.estimate:.0f} images per class{interval}"
    return f"images needed to match {what} ({100 * target:.1f} %): {estimate}; {held}."


def scratch_all_ending(scratch_all: list[CellPhaseResult], claimed: bool) -> str:
    """How the baseline of the data claim ended, in the claim's own line: a claim over a scratch cut while
    still improving is an upper bound, and the line says so with the fix."""
    known = [p for p in scratch_all if p.stopped is not None and p.recent_val_gain is not None]
    if not known:  # older results record neither
        return ""
    rising = [p for p in known if p.stopped != "plateau" and p.recent_val_gain >= MIN_GAIN]
    if not rising:
        plateau = sum(p.stopped == "plateau" for p in known)
        return (f"; scratch on all the data had stopped improving in all {len(known)} seeds "
                f"({plateau} ended on its plateau)")
    by = " or ".join(sorted({ENDED_BY[p.stopped] for p in rising}))
    gain = float(np.mean([p.recent_val_gain for p in rising]))
    return (f"; scratch on all the data was cut by its {by} while still improving in {len(rising)} of {len(known)} "
            f"seeds ({100 * gain:+.1f} pts of smoothed validation accuracy over its last {GAIN_WINDOW} epochs, "
            f"mean of those)" + (", so this overstates what transfer saves: a larger --scratch-epochs or "
                                 "--scratch-budget lets it finish" if claimed else ""))


def _scratch_endings(cells: list[CellResult]) -> str:
    ended = [c.phases["scratch"] for c in cells if "scratch" in c.phases]
    if not ended:
        return "no scratch cell ran"
    counts = {reason: sum(p.stopped == reason for p in ended) for reason in ENDED_BY}
    return f"of {len(ended)} scratch cells, " + ", ".join(f"{n} ended on the {ENDED_BY[reason]}"
                                                         for reason, n in counts.items() if n)


def _scratch_ks(cells: list[CellResult]) -> list[str]:
    return [str(k) for k in dict.fromkeys(c.k for c in sorted(cells, key=lambda c: c.images_per_class)
                                          if "scratch" in c.phases)]


def _pct1(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def paired_lines(cells: list[CellResult]) -> list[str]:
    rows = ["| images per class | comparison | difference (pts, 95 % interval) | p (paired t) | supported? |",
            "|---:|---|---:|---:|---|"]
    for _, x, methods in _groups(cells):
        for a, b in COMPARISONS:
            if a not in methods or b not in methods:
                continue
            test = _paired(methods, a, b)
            d = test.difference
            spread = f" ± {100 * d.half_width:.1f}" if d.half_width is not None else ""
            p = "–" if test.p_value is None else f"{test.p_value:.3f}"
            verdict = ("yes" if test.is_supported else "no: the interval includes 0") if test.p_value is not None \
                else "no: one seed" if d.n < 2 else "no: no spread over seeds to test against"
            rows.append(f"| {x:g} | {PHASE_LABELS[a]} − {PHASE_LABELS[b]} | {100 * d.mean:+.1f}{spread} (n={d.n}) | "
                        f"{p} | {verdict} |")
    return rows


def time_points(cells: list[CellResult]) -> dict[str, list[tuple[float, float, str]]]:
    """Mean seconds and test accuracy per method and k; fine-tuning's clock includes the frozen phase it
    starts from."""
    points: dict[str, list] = {}
    for _, x, methods in _groups(cells):
        for name in methods:
            seeds = sorted(methods[name])
            seconds = [methods[name][s].seconds + (methods["frozen"][s].seconds if name == "finetuned" else 0)
                       for s in seeds]
            points.setdefault(name, []).append((sum(seconds) / len(seconds), _accuracy(methods, name).mean, f"{x:g}"))
    return points


def per_class_lines(results: StudyResult) -> tuple[list[str], str, list[list[int]]]:
    """Confusion matrix and precision/recall of the method with the best mean *validation* accuracy on all
    data, summed over seeds."""
    _, x, methods = _groups(results.cells)[-1]
    best = max(methods, key=lambda m: mean_interval([p.val_acc for p in methods[m].values()]).mean)
    cells = [c for c in results.cells if c.images_per_class == x]
    labels, names = np.array(results.data.test_labels), results.data.class_names
    matrix = [[0] * len(names) for _ in names]
    for cell in cells:
        for i, row in enumerate(confusion_matrix(labels, np.array(cell.test_predictions[best]), len(names))):
            matrix[i] = [a + b for a, b in zip(matrix[i], row)]
    rows = ["| class | precision | recall | test images × seeds |", "|---|---:|---:|---:|"]
    for i, name in enumerate(names):
        predicted, actual = sum(r[i] for r in matrix), sum(matrix[i])
        precision = f"{100 * matrix[i][i] / predicted:.1f} %" if predicted else "–"
        recall = f"{100 * matrix[i][i] / actual:.1f} %" if actual else "–"
        rows.append(f"| {name} | {precision} | {recall} | {actual} |")
    return rows, best, matrix


def backbone_lines(results: StudyResult) -> list[str]:
    """Transfer on all of the data per backbone; skipped ones are listed with the reason."""
    rows = ["| backbone | frozen test acc | fine-tuned test acc | parameters | train seconds (frozen + fine-tune) | "
            "ms/image at batch 1 | ms/image at batch 32 | size (fp32) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    skipped = []
    for entry in results.backbones:
        if entry.skipped is not None:
            skipped.append(f"- `{entry.name}` skipped: {entry.skipped}")
            continue
        cells = entry.cells
        acc = {p: _test_acc(cells, p) for p in ("frozen", "finetuned")}
        seconds = mean_interval([c.phases["frozen"].seconds + c.phases["finetuned"].seconds for c in cells])
        latency = entry.latency_ms_per_image
        rows.append(f"| `{entry.name}` | {_pct(acc['frozen'])} | {_pct(acc['finetuned'])} | "
                    f"{entry.parameters:,} | {seconds.mean:.1f} | {latency['batch_1']:.2f} | "
                    f"{latency['batch_32']:.2f} | {entry.size_mb:.1f} MiB |")
    return rows + ([""] + skipped if skipped else [])


def unfreeze_grid(results: StudyResult) -> tuple[list[str], list[str], list[list[Estimate]]]:
    """(blocks rows, learning-rate columns, test accuracy per cell of the grid)."""
    entries = results.unfreeze
    rows = list(dict.fromkeys(str(e.blocks) for e in entries))
    columns = list(dict.fromkeys(f"{e.learning_rate:g}" for e in entries))
    grid = [[None] * len(columns) for _ in rows]
    for e in entries:
        grid[rows.index(str(e.blocks))][columns.index(f"{e.learning_rate:g}")] = _test_acc(e.cells, "finetuned")
    return rows, columns, grid


def unfreeze_lines(results: StudyResult) -> list[str]:
    rows, columns, grid = unfreeze_grid(results)
    entries = results.unfreeze
    best = max(entries, key=lambda e: mean_interval([c.phases["finetuned"].val_acc for c in e.cells]).mean)
    frozen = _test_acc(entries[0].cells, "frozen")
    table = ["| last blocks unfrozen | " + " | ".join(f"lr {c}" for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    table += [f"| {r} | " + " | ".join(_pct(e) if e else "–" for e in grid[i]) + " |" for i, r in enumerate(rows)]
    return ["![unfreezing heat-map](unfreeze_heatmap.png)", "", *table, "",
            f"Every cell starts from the same frozen-head phase (same seed, data and recipe: {_pct(frozen)} test "
            f"accuracy), then fine-tunes the last K of {entries[0].of_blocks} timm blocks at the given rate. "
            f"Best on validation: last {best.blocks} blocks at {best.learning_rate:g}.", "",
            *schedule_lines(results)]


def schedule_lines(results: StudyResult) -> list[str]:
    schedule = results.unfreeze_schedule
    if not schedule:
        return []
    stages = schedule.stages
    last = _test_acc(schedule.cells, stages[-1].name)
    steps = ", then ".join(f"{s.unfreeze.split(':')[1]} blocks for {s.epochs} epochs" for s in stages)
    return [f"Stage by stage, as one run from the same frozen head: the last {steps}, each stage from the one "
            f"before, at {schedule.learning_rate:g} (the grid's best rate on validation): fine-tuned test "
            f"accuracy {_pct(last)}."]


def how_it_ran_lines(results: StudyResult) -> list[str]:
    """The study's wall time against the sum of its trained cells' own (the parallel speed-up: about 1 in one
    process, up to the number of cells at a time on Ray), and the cells that failed; older studies: nothing."""
    if results.wall_seconds is None:
        return []
    rows = [*results.cells, *(c for b in results.backbones for c in b.cells or ()),
            *(c for p in results.unfreeze for c in p.cells),
            *(results.unfreeze_schedule.cells if results.unfreeze_schedule else ())]
    trained = [c for c in rows if not c.reused and c.seconds is not None]
    cell_seconds = sum(c.seconds for c in trained)
    hosts = sorted({c.ran_on.rsplit(":", 1)[0] for c in trained if c.ran_on})
    lines = ["## How it ran", "",
             f"This invocation took {results.wall_seconds:.0f} s of wall time; the cells it trained ({len(trained)}) "
             f"took {cell_seconds:.0f} s between them, on {', '.join(hosts) or 'no host'}: a parallel speed-up of "
             f"{cell_seconds / results.wall_seconds:.2f}× (the rest of the wall time is decoding, caching and "
             "setting up).", ""]
    if results.failed:
        lines += ["Failed twice, and so left out of every table above:", "",
                  *(f"- {f.part}, seed {f.seed}, k = {f.k} (`{f.hash}`): {f.error}" for f in results.failed), ""]
    return lines


def render_markdown(results: StudyResult) -> str:
    budget, data = results.budget, results.data
    seeds, n_cells = results.seeds, len(results.cells)
    trained = sum(not c.reused for c in results.cells)
    lines = [
        f"# transferlab study: {Path(results.study_dir).name}", "",
        f"Backbone `{results.backbone}` (weights: {results.weights.kind} `{results.weights.location}`) "
        f"at {results.image_size_px} px (scratch at "
        f"{input_size_px(results.recipe, results.image_size_px, 'scratch')} px) on {results.device}; "
        f"{len(data.class_names)} classes, training pool "
        f"{data.pool_per_class} per class, {data.n_val} validation and {data.n_test} test images (the same "
        f"for every cell). Seeds {seeds} (n = {len(seeds)}). {n_cells} cells: {trained} trained by this "
        f"invocation, {n_cells - trained} reused from `cells/`.",
        *([f"> {results.notice}"] if results.notice else []), "",
        f"Budget: **fixed optimisation steps** — every cell trains frozen {budget.epochs.frozen}, fine-tune "
        f"{budget.epochs.finetuned} and scratch up to {budget.epochs.scratch} epochs of ~{budget.pool_images} "
        f"images (a k-subset is repeated to the size of the pool), batch {budget.batch_size}; not a fixed number "
        "of epochs, which would give a model trained on a subset fewer steps in proportion to its size. Scratch "
        f"stops earlier on a plateau of its validation accuracy ({_scratch_endings(results.cells)}); it trains at "
        f"k = {', '.join(_scratch_ks(results.cells))} only (the data claim needs it on all of the data).", "",
        "Intervals are 95 % Student-t intervals over seeds; differences are paired by seed (same subset, same "
        "initialisation) and called supported only when their interval excludes zero.", "",
    ]
    if "data" in results.studies:
        lines += ["## Data efficiency: test accuracy vs images per class", "",
                  "![data efficiency](data_efficiency.png)", "",
                  *data_efficiency_lines(results.cells, results.target_acc), "",
                  "### Differences between methods", "", *paired_lines(results.cells), ""]
    if "time" in results.studies:
        lines += ["## Time to accuracy", "", "![time to accuracy](time_to_accuracy.png)", "",
                  "Seconds are wall-clock per cell on this machine; fine-tuning's include the frozen phase it starts "
                  "from, and the cell that first builds the feature cache pays for it.", ""]
    if results.unfreeze:
        lines += ["## Gradual unfreezing: fine-tuned test accuracy", "", *unfreeze_lines(results), ""]
    if results.backbones:
        lines += ["## Backbones (transfer on all of the data)", "", *backbone_lines(results), "",
                  "Latency is the whole model (backbone and head) in PyTorch eager on this machine, median of "
                  f"3 after a warm-up, at {results.image_size_px} px.", ""]
    if results.cells:
        table, best, _ = per_class_lines(results)
        lines += [f"## Per class ({PHASE_LABELS[best]}, all data, summed over {len(seeds)} seeds)", "",
                  "![confusion matrix](confusion_matrix.png)", "", *table, ""]
    lines += how_it_ran_lines(results)
    return "\n".join(lines) + "\n"


def write_study_report(study_dir: Path) -> Path:
    study_dir = Path(study_dir)
    results = read_study_results(study_dir)
    groups = _groups(results.cells)
    if "data" in results.studies and groups:
        curves = {p: [(x, _accuracy(m, p).mean, _accuracy(m, p).half_width) for _, x, m in groups if p in m]
                  for p in PHASE_ORDER}
        plot_data_efficiency(curves, _accuracy(groups[-1][2], "scratch").mean, study_dir / "data_efficiency.png")
    if "time" in results.studies and groups:
        plot_time_to_accuracy(time_points(results.cells), study_dir / "time_to_accuracy.png")
    if results.unfreeze:
        rows, columns, grid = unfreeze_grid(results)
        plot_heatmap([[e.mean if e else 0.0 for e in row] for row in grid],
                     [[f"{100 * e.mean:.1f}" + (f"±{100 * e.half_width:.1f}" if e and e.half_width is not None else "")
                       if e else "–" for e in row] for row in grid], rows, [f"lr {c}" for c in columns],
                     "fine-tune learning rate", "last blocks unfrozen", "fine-tuned test accuracy (%)",
                     study_dir / "unfreeze_heatmap.png")
    if results.cells:
        _, best, matrix = per_class_lines(results)
        plot_confusion_matrix(matrix, results.data.class_names, f"{PHASE_LABELS[best]} (test, all seeds)",
                              study_dir / "confusion_matrix.png")
    markdown = render_markdown(results)
    write_text_atomic(study_dir / "report.md", markdown)
    write_text_atomic(study_dir / "report.html", markdown_to_html(markdown, study_dir))
    return study_dir / "report.md"
