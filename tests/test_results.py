"""results.py: what a run and a study wrote reads back as typed values, writes back as the same JSON, and a
file of another format, or one missing a key, is refused in one line naming it."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from transferlab.cli import main
from transferlab.errors import UserError
from transferlab.formats import RUN_FORMAT_VERSION, STUDY_FORMAT_VERSION
from transferlab.results import CellResult, PhaseResult, RunResult, StudyResult
from transferlab.results_io import read_cell_result, results_json, read_run_results, read_study_results, write_results

STUDIES = sorted((Path(__file__).parents[1] / "benchmarks" / "results").glob("study_*.json"))  # real studies' files
DATA_STUDY = Path(__file__).parents[1] / "benchmarks" / "results" / "study_embedded_default.json"


@pytest.fixture()
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _rewrite(path: Path, change) -> None:
    results = json.loads(path.read_text())
    change(results)
    path.write_text(json.dumps(results))


def _one_line_error(read, folder: Path) -> str:
    with pytest.raises(UserError) as caught:
        read(folder)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_a_finished_run_reads_writes_and_reads_back_equal(finished_run, tmp_path):
    stored = json.loads((finished_run / "results.json").read_text())
    results = read_run_results(finished_run)
    assert isinstance(results, RunResult) and isinstance(results.phases["frozen"], PhaseResult)
    assert results.verdict.acc == stored["verdict"]["acc"]
    assert results.phases["finetuned"].val_acc == stored["phases"]["finetuned"]["val_acc"]
    assert results.confusion_matrix.matrix == stored["confusion_matrix"]["matrix"]
    assert results.phases["scratch"].unfreeze is None and results.phases["scratch"].test_acc is None

    (tmp_path / "again").mkdir()
    write_results(tmp_path / "again" / "results.json", results)
    written = json.loads((tmp_path / "again" / "results.json").read_text())
    assert written == stored and json.dumps(written) == json.dumps(stored)  # same keys, values and order
    assert "unfreeze" not in written["phases"]["scratch"] and "test_acc" not in written["phases"]["frozen"]
    assert read_run_results(tmp_path / "again") == results


@pytest.mark.parametrize("stored", STUDIES, ids=[p.stem for p in STUDIES])
def test_a_stored_study_reads_writes_and_reads_back_equal(stored, tmp_path):
    assert len(STUDIES) == 6  # the committed studies: the glob found them all
    (tmp_path / "study").mkdir()
    shutil.copy(stored, tmp_path / "study" / "results.json")
    results = read_study_results(tmp_path / "study")
    assert isinstance(results, StudyResult) and all(isinstance(c, CellResult) for c in results.cells)
    assert results.cells or results.unfreeze  # one file holds the data study, the other the unfreeze grid
    assert all(c.rank is None for c in results.cells)  # written before cells had a rank: still read

    write_results(tmp_path / "again" / "results.json", results)
    written = json.loads((tmp_path / "again" / "results.json").read_text())
    assert written == json.loads(stored.read_text())
    assert read_study_results(tmp_path / "again") == results


def test_a_cell_file_keeps_its_shape_without_the_study_row_fields(tmp_path):
    row = json.loads(DATA_STUDY.read_text())["cells"][0]
    cell = {k: v for k, v in row.items() if k not in ("reused", "rank")}
    (tmp_path / "results.json").write_text(json.dumps(cell))
    result = read_cell_result(tmp_path / "results.json")
    assert result.reused is None and results_json(result) == cell
    assert results_json(replace(result, reused=True, rank=0)) == cell | {"reused": True, "rank": 0}


def test_a_run_of_an_older_format_is_refused_in_one_line(run_copy):
    _rewrite(run_copy / "results.json", lambda r: r.update(format_version=RUN_FORMAT_VERSION - 1))
    message = _one_line_error(read_run_results, run_copy)
    assert str(run_copy / "results.json") in message and f"format {RUN_FORMAT_VERSION - 1}" in message


def test_a_study_of_another_format_is_refused_in_one_line(tmp_path):
    (tmp_path / "results.json").write_text(DATA_STUDY.read_text().replace(
        f'"format_version": {STUDY_FORMAT_VERSION}', f'"format_version": {STUDY_FORMAT_VERSION + 1}', 1))
    message = _one_line_error(read_study_results, tmp_path)
    assert str(tmp_path / "results.json") in message and f"format {STUDY_FORMAT_VERSION}" in message


@pytest.mark.parametrize(("change", "named"), [
    (lambda r: r.pop("verdict"), "'verdict'"),
    (lambda r: r["phases"]["frozen"].pop("val_acc"), "'phases.frozen.val_acc'"),
    (lambda r: r["data"]["skipped"].append({"path": "a.png"}), "'data.skipped[0].reason'"),
])
def test_a_run_missing_a_key_is_refused_in_one_line_naming_the_file_and_key(run_copy, capsys, change, named):
    _rewrite(run_copy / "results.json", change)
    message = _one_line_error(read_run_results, run_copy)
    assert str(run_copy / "results.json") in message and f"no key {named}" in message
    assert main(["report", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"


@pytest.mark.parametrize(("change", "expected"), [
    (lambda r: r["phases"]["frozen"].update(val_acc="high"), "'phases.frozen.val_acc' is \"high\", not a float"),
    (lambda r: r["verdict"].update(target_met=1), "'verdict.target_met' is 1, not a bool"),
    (lambda r: r.update(surprise=True), "unexpected key 'surprise'"),
    (lambda r: r.update(phases=[]), "'phases' is not an object"),
])
def test_a_run_with_a_key_of_the_wrong_kind_is_refused_naming_it(run_copy, change, expected):
    _rewrite(run_copy / "results.json", change)
    message = _one_line_error(read_run_results, run_copy)
    assert str(run_copy / "results.json") in message and expected in message


def test_a_study_missing_a_key_is_refused_in_one_line_naming_the_file_and_key(tmp_path):
    shutil.copy(DATA_STUDY, tmp_path / "results.json")
    _rewrite(tmp_path / "results.json", lambda r: r["cells"][0]["phases"]["scratch"].pop("test_acc"))
    message = _one_line_error(read_study_results, tmp_path)
    assert str(tmp_path / "results.json") in message and "no key 'cells[0].phases.scratch.test_acc'" in message


def test_final_fit_summary_sums_the_phases_it_ran_again_and_drops_validation():
    from transferlab.experiments.compare import final_fit_summary
    phase = PhaseResult(epochs=[], best_epoch=2, train_acc=0.5, val_acc=0.6, balanced_val_acc=0.6,
                        val_acc_over_last_epoch=0.1, gap=-0.1, seconds=3.0, cache_seconds=1.0, train_seconds=2.0,
                        learning_rate=1e-3, trainable_parameters=10, total_parameters=100, steps=4, precision="fp32",
                        precision_probe=None)
    frozen, finetuned = replace(phase, unfreeze={"layers_counted": 0}), replace(phase, seconds=5.0, train_seconds=5.0,
                                                                                 cache_seconds=0.0)
    final = final_fit_summary({"frozen": frozen, "finetuned": finetuned}, "finetuned", n_train=50)
    assert final == replace(finetuned, val_acc=None, balanced_val_acc=None, gap=None, val_acc_over_last_epoch=None,
                            seconds=8.0, cache_seconds=1.0, train_seconds=7.0, fit_of="finetuned", n_train=50)
