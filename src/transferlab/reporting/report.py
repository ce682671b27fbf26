"""report.md and report.html for a run, from results.json alone."""

import base64
from pathlib import Path

from markdown_it import MarkdownIt

from transferlab.atomic import check_not_in_the_way, write_text_atomic
from transferlab.reporting.audit_report import THUMBNAILS_PNG, audit_lines
from transferlab.reporting.plots import (confusion_plot_note, plot_accuracy_over_time, plot_audit_thumbnails,
                                         plot_confusion_matrix, plot_learning_curves)
from transferlab.reporting.tables import PHASE_LABELS, comparison_table, recipe_line, verdict_lines
from transferlab.results import RunResult
from transferlab.results_io import read_run_results


def render_markdown(results: RunResult, audit_thumbnails: bool = False) -> str:
    data, cm = results.data, results.confusion_matrix
    finetune = results.phases["finetuned"].unfreeze  # the freezing plan, a dict (models/freezing.py)
    plot_note = confusion_plot_note(len(data.class_names))
    lines = [
        f"# transferlab compare: {Path(results.run_dir).name}", "",
        f"Backbone `{results.backbone}`, weights from {results.weights.kind} "
        f"`{results.weights.location}`, on {results.device}; input "
        f"{results.preprocessing['image_size_px']} px, {results.augment.mode}.",
        *([f"> {results.notice}"] if results.notice else []), "",
        f"Data: {data.n_train} training / {data.n_val} validation / {data.n_test} test images in "
        f"{len(data.class_names)} classes ({data.split}).", "",
        recipe_line(results), "",
        "## Before and after", "", comparison_table(results), "",
        "Train accuracy is the running accuracy over the kept epoch (dropout on, as Keras reports it); "
        "val accuracy is the kept checkpoint re-evaluated. Validation chose the epochs and the kept model; the "
        "test set (if any) was read once, at the end. Seconds include building caches.", "",
        f"Fine-tuning trained the last {finetune['layers_counted']} layers with parameters "
        f"({finetune['trainable_layers']} trainable, {finetune['batchnorm_kept_frozen']} BatchNorm kept frozen); "
        f"the saved model is the {PHASE_LABELS[results.model_phase]} checkpoint.", "",
        "## Verdict", "", *verdict_lines(results), "",
        "## Learning curves", "", "![learning curves](learning_curves.png)", "",
        "## Time to accuracy", "", "Validation accuracy against the seconds since the run started: decoding the "
        "images, then the transfer model's feature caches, frozen phase and fine-tuning in turn; scratch on its "
        "own clock.", "", "![time to accuracy](time_to_accuracy.png)", "",
        f"## Confusion matrix ({PHASE_LABELS[cm.phase]}, {cm.subset})", "",
        "![confusion matrix](confusion_matrix.png)", "",
        *([plot_note, ""] if plot_note else []),
        "## Data hygiene", "",
    ]
    leak = data.leakage
    found = leak.exact_duplicates + leak.near_duplicates
    lines.append(f"- train/val leakage: {leak.exact_duplicates} exact and {leak.near_duplicates} near "
                 "duplicates of training images in validation" +
                 (" (dropped: --dedupe)" if leak.dropped and found
                  else "" if not found
                  else "; validation accuracy is optimistic, --dedupe drops them"))
    lines += [f"  - `{path}`" for path in leak.examples]
    if leak.test is not None:
        test_leak = leak.test
        lines.append(f"- train/test leakage (checked when the test set was first read, at the end): "
                     f"{test_leak.exact_duplicates} exact and {test_leak.near_duplicates} near duplicates"
                     + (" (dropped: --dedupe)" if test_leak.dropped and test_leak.examples else ""))
    lines.append(f"- class counts (train): {dict(zip(data.class_names, data.train_per_class))}")
    if data.excluded:
        lines.append(f"- excluded by --exclude (after the split; test untouched): {len(data.excluded)} images")
        lines += [f"  - `{path}`" for path in data.excluded[:10]]
        lines += [f"  - … {len(data.excluded) - 10} more in results.json"] if len(data.excluded) > 10 else []
    lines += ["", "### Skipped files", ""]
    lines += [f"- `{s.path}`: {s.reason}" for s in data.skipped] or ["None: every image decoded."]
    if data.ignored_files:
        n = len(data.ignored_files)
        lines += ["", f"{n} {'file was' if n == 1 else 'files were'} ignored: not images inside a class folder "
                  f"(first: `{data.ignored_files[0]}`)."]
    if results.audit is not None:
        lines += ["", "## Audit", "", *audit_lines(results.audit, audit_thumbnails)]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    results = read_run_results(run_dir)
    curves, over_time, matrix, md, html = (run_dir / name for name in (
        "learning_curves.png", "time_to_accuracy.png", "confusion_matrix.png", "report.md", "report.html"))
    check_not_in_the_way(files=[curves, over_time, matrix, run_dir / THUMBNAILS_PNG, md, html])
    plot_learning_curves(results, curves)
    plot_accuracy_over_time(results, over_time)
    cm = results.confusion_matrix
    plot_confusion_matrix(cm.matrix, results.data.class_names, f"{PHASE_LABELS[cm.phase]} ({cm.subset})", matrix)
    thumbnails = results.audit is not None and plot_audit_thumbnails(results.audit.issues, run_dir / THUMBNAILS_PNG)
    markdown = render_markdown(results, thumbnails)
    write_text_atomic(md, markdown)
    write_text_atomic(html, markdown_to_html(markdown, run_dir))
    return md


def markdown_to_html(markdown: str, images_dir: Path) -> str:
    """A page that opens offline: every image is embedded as base64 from `images_dir`, so the one file can
    be mailed or archived alone. Raw HTML stays off: file and class names in the report are text."""
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(markdown)
    for image in (child for token in tokens for child in token.children or () if child.type == "image"):
        data = base64.b64encode((images_dir / image.attrGet("src")).read_bytes()).decode("ascii")
        image.attrSet("src", f"data:image/png;base64,{data}")
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto}"
             "td,th{padding:2px 8px;border-bottom:1px solid #ddd}")
    return (f"<!doctype html><meta charset=utf-8><title>transferlab report</title><style>{style}</style>\n"
            + parser.renderer.render(tokens, parser.options, {}))
