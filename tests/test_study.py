"""study end to end on real (small) data: nested subsets, cells reused by hash, added seeds, the report."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import tiny_config

from transferlab import StudyConfig, study
from transferlab.cli import main
from transferlab.data.decoded import DecodedImages
from transferlab.data.scan import LabelledImage
from transferlab.experiments import phases
from transferlab.experiments.interrupts import RunInterrupted
from transferlab.experiments.study_plan import nested_subset
from transferlab.formats import STUDY_FORMAT_VERSION
from transferlab.results import CellPhaseResult, CellResult

EPOCHS = dict(scratch_epochs=1, frozen_epochs=1, finetune_epochs=1)


def _cells(study_dir: Path) -> list[dict]:
    return json.loads((study_dir / "results.json").read_text())["cells"]


def _finished_at(study_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (study_dir / "cells").glob("*/results.json")}


@pytest.fixture(scope="module")
def two_seed_study(small_data, tmp_path_factory) -> tuple[Path, StudyConfig]:
    tmp = tmp_path_factory.mktemp("study")
    cfg = StudyConfig(tiny_config(small_data, tmp, test_fraction=0.25, **EPOCHS), studies=("data", "time"),
                      seeds=2, ks=(2, None), study_dir=tmp / "study")
    return study(cfg), cfg


def test_nested_subsets_are_stratified_and_nested_per_seed():
    pool = DecodedImages(images=[LabelledImage(Path(f"c{label}/{i}.png"), label) for label in range(3)
                                 for i in range(20)], content_keys=[], pixels=None, skipped=[])
    for seed in (0, 1):
        smaller, larger = nested_subset(pool, 5, seed), nested_subset(pool, 10, seed)
        assert set(smaller) < set(larger)
        assert [sum(im.label == c for im in smaller) for c in range(3)] == [5, 5, 5]
        assert nested_subset(pool, None, seed) and len(nested_subset(pool, None, seed)) == 60
    assert set(nested_subset(pool, 5, 0)) != set(nested_subset(pool, 5, 1))


def test_study_trains_every_cell_once_on_the_same_validation_and_test_sets(two_seed_study):
    study_dir, _ = two_seed_study
    cells = _cells(study_dir)
    assert sorted((c["seed"], str(c["k"])) for c in cells) == [(0, "2"), (0, "all"), (1, "2"), (1, "all")]
    assert not any(c["reused"] for c in cells)
    keys = [json.loads((study_dir / "cells" / c["hash"] / "cell.json").read_text()) for c in cells]
    assert len({(k["val"], k["test"]) for k in keys}) == 1
    for c in cells:
        assert set(c["phases"]) == {"scratch", "frozen", "finetuned"}
        assert all(0 <= p["test_acc"] <= 1 for p in c["phases"].values())
    # a fixed budget: the 2-per-class subset is repeated to the pool's size, so the step counts match
    steps = {str(c["k"]): c["phases"]["scratch"]["steps"] for c in cells}
    assert steps["2"] == steps["all"]


def _cell_phase(test_acc: float, stopped: str | None = None, gain: float | None = None) -> CellPhaseResult:
    """A cell's phase with a crafted test accuracy (and, for scratch, how it ended); the report's verdicts
    read nothing else of it."""
    return CellPhaseResult(val_acc=test_acc, test_acc=test_acc, seconds=1.0, train_seconds=1.0, steps=1, best_epoch=1,
                           trainable_parameters=1, total_parameters=1, stopped=stopped, recent_val_gain=gain)


def test_the_data_claim_says_in_its_own_line_when_its_baseline_was_cut_while_improving():
    """Four seeds: two scratch cells cut by their epoch cap while rising (+2.0, +1.0 pts), one cut flat, one
    on its plateau; fine-tuned on 5 per class is clearly not worse, so the claim is made and called an upper
    bound."""
    from transferlab.reporting.study_report import headline_lines
    endings = [("epochs", 0.02), ("epochs", 0.01), ("epochs", 0.001), ("plateau", 0.0)]
    scratch = {s: _cell_phase(0.60 + 0.01 * s, *ending) for s, ending in enumerate(endings)}
    groups = [("5", 5.0, {"finetuned": {s: _cell_phase(0.70 + 0.02 * s) for s in range(4)}}),
              ("all", 100.0, {"finetuned": {s: _cell_phase(0.80 + 0.01 * (s % 2)) for s in range(4)},
                              "scratch": scratch})]
    claim = headline_lines(groups)[0]
    assert claim.startswith("- fine-tuned with 5 images per class (20× less data) is not worse")
    assert claim.endswith("; scratch on all the data was cut by its epoch cap while still improving in 2 of 4 "
                          "seeds (+1.5 pts of smoothed validation accuracy over its last 5 epochs, mean of those), "
                          "so this overstates what transfer saves: a larger --scratch-epochs or --scratch-budget "
                          "lets it finish.")
    groups[1][2]["scratch"] = {s: _cell_phase(0.60 + 0.01 * s, "plateau" if s else "budget", 0.001) for s in range(4)}
    assert headline_lines(groups)[0].endswith(
        "; scratch on all the data had stopped improving in all 4 seeds (3 ended on its plateau).")


def test_report_is_self_contained_and_claims_only_what_the_intervals_support(two_seed_study):
    from transferlab.reporting.study_report import data_efficiency_lines, paired_lines
    study_dir, _ = two_seed_study
    page = (study_dir / "report.html").read_text()
    assert "<img" in page and "data:image/png;base64," in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    report = (study_dir / "report.md").read_text()
    assert "fixed optimisation steps" in report and "(n=2)" in report and "95 %" in report
    # one scratch epoch: every scratch cell ends on its cap, none on the plateau rule (patience 5)
    n_scratch = sum("scratch" in c["phases"] for c in _cells(study_dir))
    assert f"(of {n_scratch} scratch cells, {n_scratch} ended on the epoch cap)" in report
    # The data claim, from crafted per-seed test accuracies: a one-sided paired test of "not worse than scratch
    # on all the data by more than 2 pts" (scipy.stats.ttest_1samp against -0.02, by hand):
    # fine-tuned at 5 per class: differences 0.20, 0.19, 0.18 -> p = 0.00038, supported at the smallest k;
    # frozen: at 5 per class -0.10, 0.08, -0.04 (mean -0.02: p = 0.5), on all 0, 0.04, -0.01 (p = 0.094): never.
    acc = {("scratch", 5): [0.30, 0.35, 0.32], ("frozen", 5): [0.40, 0.60, 0.50], ("finetuned", 5): [0.70, 0.71, 0.72],
           ("scratch", 100): [0.50, 0.52, 0.54], ("frozen", 100): [0.50, 0.56, 0.53],
           ("finetuned", 100): [0.80, 0.84, 0.82]}
    crafted = [CellResult(hash="", seed=seed, k=5 if k == 5 else "all", images_per_class=float(k), repeats=1,
                          phases={m: _cell_phase(acc[m, k][seed]) for m in ("scratch", "frozen", "finetuned")},
                          test_predictions={}) for k in (5, 100) for seed in range(3)]
    no_curve = "  (no learning curve: it needs at least 4 values of k, one of them held out to check the fit)"
    assert data_efficiency_lines(crafted)[-5:] == ["",
        "- fine-tuned with 5 images per class (20× less data) is not worse than scratch on all the data by more than "
        "2 pts: mean difference +19.0 pts, p = 0.000, n = 3 seeds (one-sided paired t-test).", no_curve,
        "- pretrained, frozen not worse than scratch on all the data (margin 2 pts, one-sided paired t-test, "
        "p < 0.05): not supported at n = 3 seeds at any k.", no_curve]
    # paired by seed; p from scipy.stats.ttest_rel: 0.00119, 0.0552, 0.0624 at k = 5
    assert paired_lines(crafted)[2:5] == [
        "| 5 | fine-tuned − scratch (before) | +38.7 ± 5.7 (n=3) | 0.001 | yes |",
        "| 5 | pretrained, frozen − scratch (before) | +17.7 ± 18.6 (n=3) | 0.055 | no: the interval includes 0 |",
        "| 5 | fine-tuned − pretrained, frozen | +21.0 ± 23.7 (n=3) | 0.062 | no: the interval includes 0 |"]


def test_a_study_results_file_copied_away_from_its_cells_is_reported_as_a_study(two_seed_study, tmp_path, capsys):
    """`report` told a study from a run by its cells/ folder: a study's results.json kept on its own (as
    benchmarks/results keeps them) was read as a run's and refused with a run's fix."""
    study_dir, _ = two_seed_study
    copy = tmp_path / "kept"
    copy.mkdir()
    (copy / "results.json").write_text((study_dir / "results.json").read_text())
    assert main(["report", str(copy)]) == 0 and "fixed optimisation steps" in (copy / "report.md").read_text()
    other = json.loads((study_dir / "results.json").read_text()) | {"format_version": STUDY_FORMAT_VERSION + 1}
    (copy / "results.json").write_text(json.dumps(other))
    assert main(["report", str(copy)]) == 2
    assert "re-run the study" in capsys.readouterr().err


def test_rerun_trains_nothing_and_an_added_seed_trains_only_its_cells(two_seed_study):
    study_dir, cfg = two_seed_study
    before = _finished_at(study_dir)
    study(cfg)
    assert all(c["reused"] for c in _cells(study_dir)) and _finished_at(study_dir) == before
    study(replace(cfg, seeds=3))
    cells = _cells(study_dir)
    assert sorted((c["seed"], c["reused"]) for c in cells) == [(0, True), (0, True), (1, True), (1, True),
                                                                (2, False), (2, False)]
    assert {k: v for k, v in _finished_at(study_dir).items() if k in before} == before


@pytest.mark.parametrize("option, message", [(["--ks", "0"], "--ks"), (["--ks", "5,ten"], "--ks: 'ten'"),
                                             (["--seeds", "0"], "--seeds"), (["--studies", "data,nope"], "nope")])
def test_bad_study_options_are_one_line_errors_that_write_nothing(small_data, tmp_path, capsys, option, message):
    code = main(["study", str(small_data), "--runs-dir", str(tmp_path / "runs"), "--cache-dir",
                 str(tmp_path / "cache"), "--quiet", *option])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_backbones_table_lists_a_backbone_without_weights_as_skipped(small_data, tmp_path, capsys):
    cfg = StudyConfig(tiny_config(small_data, tmp_path, test_fraction=0.25, **EPOCHS), studies=("backbones",),
                      seeds=1, backbones=("tf_efficientnet_lite0", "mobilenetv9_nope"), study_dir=tmp_path / "runs" / "s")
    study_dir = study(cfg)
    entries = json.loads((study_dir / "results.json").read_text())["backbones"]
    assert [e["name"] for e in entries] == ["tf_efficientnet_lite0", "mobilenetv9_nope"]
    trained, skipped = entries
    assert "unknown backbone" in skipped["skipped"]
    assert trained["parameters"] > 0 and trained["latency_ms_per_image"]["batch_32"] > 0
    assert set(trained["cells"][0]["phases"]) == {"frozen", "finetuned"}  # transfer only: scratch is the data study's
    report = (study_dir / "report.md").read_text()
    assert "`mobilenetv9_nope` skipped: unknown backbone" in report and "ms/image at batch 1" in report
    (study_dir / "report.md").unlink()
    assert main(["report", str(study_dir)]) == 0 and (study_dir / "report.md").exists()
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.startswith("s: tf_efficientnet_lite0, study (backbones), backbones trained: "
                                              "tf_efficientnet_lite0,")


def test_unfreeze_grid_starts_every_cell_from_the_same_frozen_head(small_data, tmp_path):
    cfg = StudyConfig(tiny_config(small_data, tmp_path, test_fraction=0.25, **EPOCHS), studies=("unfreeze",),
                      seeds=1, study_dir=tmp_path / "s")
    study_dir = study(cfg)
    entries = json.loads((study_dir / "results.json").read_text())["unfreeze"]
    assert [(e["blocks"], e["learning_rate"]) for e in entries] == [(b, lr) for b in (0, 1, 2, 4, "all")
                                                                     for lr in (1e-4, 1e-5, 1e-6)]
    assert len({e["cells"][0]["phases"]["frozen"]["test_acc"] for e in entries}) == 1
    trainable = [e["cells"][0]["phases"]["finetuned"]["trainable_parameters"] for e in entries[::3]]
    assert trainable == sorted(trainable) and trainable[0] < trainable[-1]
    assert (study_dir / "unfreeze_heatmap.png").stat().st_size > 0
    schedule = json.loads((study_dir / "results.json").read_text())["unfreeze_schedule"]
    names = [s["name"] for s in schedule["stages"]]
    assert names == ["stage-1", "stage-2", "stage-4", "stage-all"]
    phases_run = schedule["cells"][0]["phases"]
    assert set(phases_run) == {"frozen", *names} and phases_run["frozen"]["test_acc"] == entries[0]["cells"][0][
        "phases"]["frozen"]["test_acc"]
    assert [phases_run[n]["trainable_parameters"] for n in names] == sorted(
        phases_run[n]["trainable_parameters"] for n in names)
    report = (study_dir / "report.md").read_text()
    assert "Gradual unfreezing" in report and "Stage by stage" in report


def test_demo_study_checks_its_options_before_exporting_the_data(tmp_path, capsys):
    assert main(["demo", "--study", "--seeds", "0", "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: --seeds must be a whole number")
    assert not (tmp_path / "cache").exists()


def test_interrupted_study_keeps_finished_cells_and_resumes_the_stopped_one(two_seed_study, tmp_path, monkeypatch):
    reference_dir, cfg = two_seed_study
    cfg = replace(cfg, study_dir=tmp_path / "again")
    original, cells_seen = phases.save_checkpoint, []

    def stop_in_second_cell(run_dir, phase, *args):
        original(run_dir, phase, *args)
        cells_seen.append(run_dir)
        if len(set(cells_seen)) == 2 and phase == "finetuned":
            raise KeyboardInterrupt  # what the signal handler raises
    monkeypatch.setattr(phases, "save_checkpoint", stop_in_second_cell)
    with pytest.raises(RunInterrupted, match="transferlab study"):
        study(cfg)
    monkeypatch.undo()
    finished = _finished_at(cfg.study_dir)
    assert len(finished) == 1
    study(cfg)
    cells = {c["hash"]: c for c in _cells(cfg.study_dir)}
    assert [h for h, c in cells.items() if c["reused"]] == list(finished)
    reference = {c["hash"]: c for c in _cells(reference_dir)}
    for h, c in cells.items():  # same resolved config, same hash, the same numbers as without the interrupt
        assert {p: (v["val_acc"], v["test_acc"]) for p, v in c["phases"].items()} == \
            {p: (v["val_acc"], v["test_acc"]) for p, v in reference[h]["phases"].items()}


def test_a_rerun_with_options_that_draw_another_split_is_refused(two_seed_study):
    study_dir, cfg = two_seed_study
    for changed in (dict(seed=7), dict(test_fraction=0.3)):
        with pytest.raises(Exception, match=r"holds a study on another split \(--(seed|test-fraction) changed\)"):
            study(replace(cfg, compare=replace(cfg.compare, **changed)))
    assert json.loads((study_dir / "config.json").read_text())["study"]["compare"]["seed"] == cfg.compare.seed


def test_a_second_process_on_the_same_study_folder_is_refused(two_seed_study):
    from filelock import FileLock
    study_dir, cfg = two_seed_study
    with FileLock(study_dir / ".lock"):  # what a running study holds
        with pytest.raises(Exception, match="another `transferlab study` is working in"):
            study(cfg)


@pytest.mark.parametrize("argv, message", [
    (["demo", "--seeds", "2"], "--seeds belong to `demo --study`"),
    (["study", "DATA", "--test", "DATA", "--test-fraction", "0.3"], "--test-fraction draws the test part"),
])
def test_study_options_that_would_be_ignored_are_refused(small_data, tmp_path, capsys, argv, message):
    argv = [str(small_data) if a == "DATA" else a for a in argv]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_a_study_refuses_an_explicit_final_fit(small_data, tmp_path, capsys):
    from transferlab.cli import main
    assert main(["study", str(small_data), "--test-fraction", "0.2", "--final-fit", "--runs-dir",
                 str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--final-fit: a study's cells learn from their k images only" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
