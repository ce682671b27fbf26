"""`transferlab runs`: past compare runs and studies in a runs folder, one line each, from their JSON alone."""

import json
from pathlib import Path

from transferlab.errors import UserError
from transferlab.reporting.tables import PHASE_LABELS, PHASE_ORDER
from transferlab.results import AuditResult, RunResult, StudyResult
from transferlab.results_io import from_json, read_any_results


def _headline(results: RunResult | StudyResult) -> str:
    if isinstance(results, StudyResult):
        cells = results.cells
        if not cells:  # backbones and unfreezing only: their own tables in report.md
            done = [b.name for b in results.backbones if b.skipped is None]
            return (f"study ({','.join(results.studies)}), backbones trained: {', '.join(done) or 'none'}, "
                    f"unfreezing grid cells: {len(results.unfreeze)}")
        trained = [c for c in cells if c.images_per_class == max(x.images_per_class for x in cells)]
        means = {p: sum(c.phases[p].test_acc for c in trained) / len(trained) for p in PHASE_ORDER
                 if all(p in c.phases for c in trained)}
        return (f"study ({','.join(results.studies)}), {len(cells)} cells, {len(results.seeds)} seeds; all data, "
                "mean test acc " + ", ".join(f"{PHASE_LABELS[p]} {100 * a:.1f}%" for p, a in means.items()))
    subset = results.verdict.subset
    accuracies = {p: results.phases[p].accuracy_on(subset) for p in (*PHASE_ORDER, "final") if p in results.phases}
    return f"compare, {subset} acc " + ", ".join(f"{PHASE_LABELS[p]} {100 * acc:.1f}%" for p, acc in accuracies.items()
                                                 if acc is not None)  # the final fit has no validation number


def _audit_headline(path: Path) -> str:
    try:
        audit = from_json(AuditResult, json.loads(path.read_bytes()))
    except (OSError, ValueError):
        return "audit.json unreadable by this transferlab"
    return (f"audit of {audit.n_images} images, probe agrees with {audit.probe_accuracy:.1%}; doubted "
            + ", ".join(f"{n} {reason}" for reason, n in audit.counts.items()))


def list_runs(runs_dir: Path) -> list[str]:
    """Finished runs and studies, oldest first; unfinished or unreadable folders are named as such."""
    lines = []
    for folder in sorted(p for p in Path(runs_dir).iterdir() if p.is_dir()) if Path(runs_dir).is_dir() else []:
        if (folder / "audit.json").is_file():  # `transferlab audit`'s folder
            lines.append(f"{folder.name}: {_audit_headline(folder / 'audit.json')}")
            continue
        if not (folder / "results.json").is_file():
            lines.append(f"{folder.name}: unfinished (no results.json)")
            continue
        try:
            results = read_any_results(folder)
            lines.append(f"{folder.name}: {results.backbone}, {_headline(results)}")
        except UserError:
            lines.append(f"{folder.name}: results.json unreadable by this transferlab")
    return lines
