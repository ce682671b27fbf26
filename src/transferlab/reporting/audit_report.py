"""The Audit section (compare's report, and `transferlab audit`'s own report)."""

from pathlib import Path

from transferlab.atomic import write_text_atomic
from transferlab.reporting.plots import plot_audit_thumbnails
from transferlab.results import AuditResult

SHOWN = 20  # rows of the table; audit.csv (or results.json) holds every issue
THUMBNAILS_PNG = "audit_issues.png"


def _cell(text: str) -> str:
    """A file or class name as a Markdown table cell: its own text, never markup."""
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def audit_lines(audit: AuditResult, thumbnails: bool) -> list[str]:
    counts = audit.counts
    lines = [
        f"Out-of-fold linear probe ({audit.folds} folds) on the backbone's features ({audit.features}) of the "
        f"{audit.n_images} train + validation images (never test): {audit.probe_accuracy:.1%} agree with their "
        f"folder. Doubted: {counts['label']} labels (cleanlab, confident learning), {counts['outlier']} outliers "
        f"(local outlier factor), {counts['duplicate']} copies; {audit.seconds:.1f} s.", "",
        "A doubted label is a suggestion to look at, not a verdict: on classes that look alike the probe's own "
        "mistakes are doubted too. To train without some images, list them (or edit a copy of audit.csv) and "
        "give it as `--exclude FILE`; the report then names what was left out.", "",
    ]
    if not audit.issues:
        return lines + ["Nothing was doubted."]
    lines += ["| # | file | subset | given | suggested | score | reason |", "|---:|---|---|---|---|---:|---|"]
    lines += [f"| {n} | {_cell(i.file)} | {i.subset} | {_cell(i.given)} | {_cell(i.suggested)} | {i.score:.3f} | "
              f"{i.reason}{' of ' + _cell(i.detail) if i.detail else ''} |"
              for n, i in enumerate(audit.issues[:SHOWN], 1)]
    if len(audit.issues) > SHOWN:
        lines += ["", f"{len(audit.issues) - SHOWN} more in the full list."]
    if thumbnails:
        lines += ["", f"![the top issues]({THUMBNAILS_PNG})"]
    return lines


def write_audit_report(folder: Path, audit: AuditResult, source: str) -> Path:
    from transferlab.reporting.report import markdown_to_html

    thumbnails = plot_audit_thumbnails(audit.issues, folder / THUMBNAILS_PNG)
    markdown = "\n".join([f"# transferlab audit: {Path(source).name}", "", f"Data: `{source}`; every issue is in "
                          "audit.csv (file, subset, given, suggested, score, reason, detail) and audit.json.", "",
                          "## Audit", "", *audit_lines(audit, thumbnails)]) + "\n"
    write_text_atomic(folder / "report.md", markdown)
    write_text_atomic(folder / "report.html", markdown_to_html(markdown, folder))
    return folder / "report.md"
