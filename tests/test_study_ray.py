"""A study's cells as Ray tasks (experiments/study_ray.py) on a local Ray of 2 CPUs: the same numbers as one
process, a killed worker retried from its checkpoints, a failing cell reported while the others finish."""

import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import tiny_config

from transferlab import StudyConfig, study
from transferlab.cli import main
from transferlab.errors import UserError
from transferlab.experiments.interrupts import RunInterrupted

EPOCHS = dict(scratch_epochs=1, frozen_epochs=1, finetune_epochs=1)
EXIT_ONCE_ENV = "TRANSFERLAB_TEST_EXIT_ONCE"  # study_ray's test hook, named here so this module imports without Ray


def _config(data: Path, tmp: Path, **options) -> StudyConfig:
    """The tiny study: one seed, k = 2 and all (2 cells, both with scratch), one torch thread per cell."""
    return StudyConfig(tiny_config(data, tmp, test_fraction=0.25, **EPOCHS), seeds=1, ks=(2, None),
                       study_dir=tmp / "study", **({"cell_threads": 1} | options))


def _results(study_dir: Path) -> dict:
    return json.loads((study_dir / "results.json").read_text())


def _numbers(cell: dict) -> dict:
    """What two runs of a cell must agree on: every phase's accuracies, kept epoch and steps, every prediction."""
    return {"hash": cell["hash"], "test_predictions": cell["test_predictions"],
            "phases": {name: {k: p[k] for k in ("val_acc", "test_acc", "best_epoch", "steps")}
                       for name, p in cell["phases"].items()}}


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray for the module (it takes seconds to start); its workers see EXIT_ONCE_ENV's file."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'transferlab[ray]'")
    flag = tmp_path_factory.mktemp("hook") / "exit-once"
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {EXIT_ONCE_ENV: str(flag)}})
    yield flag
    ray.shutdown()


@pytest.fixture(scope="module")
def one_process(small_data, tmp_path_factory) -> dict:
    """The reference: the same study in this process, one thread per cell."""
    return _results(study(_config(small_data, tmp_path_factory.mktemp("one"))))


def test_a_study_on_ray_equals_the_same_study_in_one_process(local_ray, one_process, small_data, tmp_path):
    study_dir = study(_config(small_data, tmp_path, ray="local"))
    on_ray = _results(study_dir)
    assert [_numbers(c) for c in on_ray["cells"]] == [_numbers(c) for c in one_process["cells"]]
    assert "failed" not in on_ray and not any(c["reused"] for c in on_ray["cells"])
    assert all(c["ran_on"].split(":")[1] != str(os.getpid()) and c["seconds"] > 0 for c in on_ray["cells"])
    assert on_ray["environment"]["torch_threads"] == 1 == one_process["environment"]["torch_threads"]
    assert not (study_dir / ".ray-driver-token").exists()
    assert "parallel speed-up" in (study_dir / "report.md").read_text()

    again = _results(study(_config(small_data, tmp_path, ray="local")))  # finished cells are not sent to Ray
    assert all(c["reused"] for c in again["cells"]) and again["cells"][0]["ran_on"] == on_ray["cells"][0]["ran_on"]


def test_a_worker_killed_mid_cell_is_retried_from_its_checkpoints(local_ray, one_process, small_data, tmp_path):
    local_ray.touch()  # the hook: the first cell to checkpoint an epoch kills its worker
    on_ray = _results(study(_config(small_data, tmp_path, ray="local")))
    [taken] = list(local_ray.parent.glob("exit-once.*"))
    assert not local_ray.exists()
    assert [_numbers(c) for c in on_ray["cells"]] == [_numbers(c) for c in one_process["cells"]]
    assert "failed" not in on_ray
    # the retry resumed: the checkpoint written before the crash was not written again
    killed_cell = tmp_path / "study" / "cells" / taken.name.split(".")[-1]
    assert (killed_cell / "checkpoints" / "frozen.pt").stat().st_mtime_ns <= taken.stat().st_mtime_ns
    assert (killed_cell / "results.json").exists()


def test_a_cell_that_always_fails_is_reported_and_the_others_finish(local_ray, one_process, small_data, tmp_path):
    small_k, every = one_process["cells"]  # in plan order: k = 2, then all
    (tmp_path / "study" / "cells" / small_k["hash"] / "cell.json").mkdir(parents=True)  # the cell cannot write it
    study_dir = study(_config(small_data, tmp_path, ray="local"))
    on_ray = _results(study_dir)
    [failed] = on_ray["failed"]
    assert (failed["hash"], failed["k"], failed["seed"], failed["part"]) == (small_k["hash"], 2, 0, "data")
    assert failed["error"].startswith("IsADirectoryError") and "cell.json" in failed["error"]
    assert [_numbers(c) for c in on_ray["cells"]] == [_numbers(every)]
    assert f"`{small_k['hash']}`" in (study_dir / "report.md").read_text()


def test_ctrl_c_on_the_driver_cancels_the_cells_and_the_same_call_resumes(local_ray, one_process, small_data, tmp_path,
                                                                          monkeypatch):
    import ray
    cells, deadline = tmp_path / "study" / "cells", time.monotonic() + 300  # bounds the waits below

    def interrupted_mid_cell(*args, **kwargs):
        while not list(cells.glob("*/checkpoints/*")) and time.monotonic() < deadline:  # a task is training
            time.sleep(0.05)
        raise KeyboardInterrupt  # what the signal handler raises while the driver waits on its cells
    monkeypatch.setattr(ray, "wait", interrupted_mid_cell)
    cfg = _config(small_data, tmp_path, ray="local")
    resume_hint = r"the same command \(`transferlab study …` or `transferlab demo --study …`"
    with pytest.raises(RunInterrupted, match=resume_hint):
        study(cfg)
    monkeypatch.undo()
    while ray.available_resources().get("CPU") != 2 and time.monotonic() < deadline:  # the workers give their CPUs back
        time.sleep(0.1)
    # cancelled, not left to run to the end: no cell finished, and the same call resumes the stopped ones
    assert not list(cells.glob("*/results.json")) and list(cells.glob("*/checkpoints/*"))
    assert not (tmp_path / "study" / ".ray-driver-token").exists()
    on_ray = _results(study(cfg))
    assert "failed" not in on_ray and not any(c["reused"] for c in on_ray["cells"])
    assert [_numbers(c) for c in on_ray["cells"]] == [_numbers(c) for c in one_process["cells"]]


def test_a_cell_no_ray_node_can_hold_is_refused_before_the_study_folder_is_made(local_ray, small_data, tmp_path):
    with pytest.raises(UserError, match=r"--cell-threads 3: no Ray node has that many CPUs \(the largest has 2\)"):
        study(_config(small_data, tmp_path, ray="local", cell_threads=3))
    assert not (tmp_path / "study").exists()


def test_a_worker_that_cannot_see_the_study_folder_stops_the_study_in_one_line(local_ray, small_data, tmp_path,
                                                                              monkeypatch):
    from transferlab.experiments import study_ray
    monkeypatch.setattr(study_ray, "write_text_atomic", lambda path, text: None)  # the token never reaches the folder
    with pytest.raises(UserError, match=r"the Ray worker on .* cannot see the study folder .* every Ray node mounts at "
                                        "the same path") as e:
        study(_config(small_data, tmp_path, ray="local"))
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "study" / "cells").iterdir()) and not (tmp_path / "study" / "results.json").exists()


def test_a_worker_that_would_train_another_cell_stops_the_study_in_one_line(local_ray, small_data, tmp_path,
                                                                            monkeypatch):
    from transferlab.experiments import study as study_module
    environment = study_module.environment  # the driver's versions differ from what the workers have installed
    monkeypatch.setattr(study_module, "environment", lambda *a: environment(*a) | {"versions": {"torch": "0.0"}})
    with pytest.raises(UserError, match=r"the Ray worker on .* would train cell \w+ on another 'versions' than the "
                                        "driver planned; install the same packages"):
        study(_config(small_data, tmp_path, ray="local"))
    assert not list((tmp_path / "study" / "cells").iterdir())


def test_ray_without_the_extra_is_one_line_naming_it(small_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the extra: ImportError
    assert main(["study", str(small_data), "--ray", "local", "--runs-dir", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'transferlab[ray]'" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("options, message", [
    (dict(ray="head node"), "--ray 'head node' is not local, auto or a cluster address"),
    (dict(cells_per_gpu=2), "--cells-per-gpu shares a GPU between Ray tasks; add --ray"),
    (dict(ray="auto", cell_threads=0), "--cell-threads must be a whole number ≥ 1"),
])
def test_bad_ray_options_are_one_line_errors(small_data, tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        replace(_config(small_data, tmp_path), **options)


def test_a_study_under_torchrun_is_refused_naming_ray(small_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match=r"does not run under torchrun .* --ray local\|auto\|ADDRESS"):
        study(_config(small_data, tmp_path))
    assert not (tmp_path / "study").exists()


def test_a_ray_address_nobody_answers_is_one_line_before_anything_is_written(small_data, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'transferlab[ray]'")
    for address, says in (("127.0.0.1:1", "nothing answers there"), ("no-port", "a cluster address")):
        with pytest.raises(UserError, match=says) as refused:
            study(_config(small_data, tmp_path, ray=address))
        assert "\n" not in str(refused.value) and not (tmp_path / "study").exists()


def test_a_failed_cell_records_the_first_line_of_what_it_raised():
    """torch's errors run to many lines (C++ frames): results.json and the report keep the line that says it."""
    from types import SimpleNamespace

    from transferlab.experiments.study_ray import _outcome

    class RayError(Exception):
        pass

    def get(ref):
        error = RayError("ray.exceptions.RayTaskError: the task failed, its traceback follows")
        error.cause = RuntimeError("mat1 and mat2 shapes cannot be multiplied\nException raised from frame 1\nframe 2")
        raise error

    ray = SimpleNamespace(get=get, exceptions=SimpleNamespace(RayError=RayError))
    plan = SimpleNamespace(variant=SimpleNamespace(label="data"), hash="c0ffee", seed=1, k_label=5)
    failed = _outcome(ray, None, plan)
    assert (failed.part, failed.hash, failed.seed, failed.k) == ("data", "c0ffee", 1, 5)
    assert failed.error == "RuntimeError: mat1 and mat2 shapes cannot be multiplied"
