"""Stopping a run at every stage (SIGINT, SIGTERM, SIGKILL), then --resume: the same result as never stopping.

A stage is entered through a function the test wraps so that the signal arrives exactly there: decode
(decode_images), cache (prefix_outputs), and after the first checkpoint of the frozen, fine-tune and scratch
phases. SIGINT is sent in-process (the run's own handler must turn it into RunInterrupted); SIGKILL is sent
by a child process to itself, so nothing at all gets to clean up.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import metrics_rows, tiny_config

from transferlab import compare, resume
from transferlab.cli import main
from transferlab.experiments import phases as phases_module
from transferlab.experiments import datasets
from transferlab.experiments.interrupts import RunInterrupted

STAGES = ["decode", "cache", "frozen", "finetuned", "scratch"]
EPOCHS = dict(frozen_epochs=2, finetune_epochs=2, scratch_epochs=2)




def _accuracies(run_dir: Path) -> dict:
    phases = json.loads((run_dir / "results.json").read_text())["phases"]
    return {name: p["val_acc"] for name, p in phases.items()}


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory) -> Path:
    return compare(tiny_config(small_data, tmp_path_factory.mktemp("reference"), **EPOCHS))


def _signal_at(stage: str, monkeypatch, send) -> None:
    """Make `send()` happen when the run reaches `stage`."""
    if stage in ("decode", "cache"):
        module, name = (datasets, "decode_images") if stage == "decode" else (phases_module, "prefix_outputs")
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            send()
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapped)
        return
    original = phases_module.save_checkpoint

    def after_first_epoch(run_dir, phase, *args):
        original(run_dir, phase, *args)
        if phase == stage:
            send()
    monkeypatch.setattr(phases_module, "save_checkpoint", after_first_epoch)


@pytest.mark.parametrize("stage", STAGES)
def test_sigint_at_each_stage_then_resume_equals_uninterrupted(stage, small_data, reference, tmp_path,
                                                               monkeypatch):
    cfg = tiny_config(small_data, tmp_path, **EPOCHS)
    if stage == "decode":  # decoding checks the data before a run folder exists: a stop leaves nothing to resume
        # Python's own Ctrl-C handler, also where pytest runs as a background job (which inherits SIGINT ignored)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with monkeypatch.context() as patch:
                _signal_at(stage, patch, lambda: os.kill(os.getpid(), signal.SIGINT))
                with pytest.raises(KeyboardInterrupt):
                    compare(cfg)
        finally:
            signal.signal(signal.SIGINT, previous)
        assert not (tmp_path / "runs").exists()
        run_dir = compare(cfg)  # the same command again
        assert metrics_rows(run_dir) == metrics_rows(reference) and _accuracies(run_dir) == _accuracies(reference)
        return
    with monkeypatch.context() as patch:
        _signal_at(stage, patch, lambda: os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(RunInterrupted) as stopped:
            compare(cfg)
    run_dir = stopped.value.run_dir
    assert not (run_dir / "results.json").exists()
    assert (run_dir / "split.json").exists() and (run_dir / "config.json").exists()
    assert f"--resume {run_dir}" in str(stopped.value)
    resume(run_dir, show_progress=False)
    assert metrics_rows(run_dir) == metrics_rows(reference)
    assert _accuracies(run_dir) == _accuracies(reference)


DRIVER = textwrap.dedent("""
    import os, signal, sys
    from transferlab.cli import main
    from transferlab.experiments import datasets, phases
    stage = sys.argv[1]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if stage in ("decode", "cache"):
        module, name = (datasets, "decode_images") if stage == "decode" else (phases, "prefix_outputs")
        original = getattr(module, name)
        setattr(module, name, lambda *a, **k: die())
    else:
        original = phases.save_checkpoint
        def after(run_dir, phase, *a):
            original(run_dir, phase, *a)
            if phase == stage:
                die()
        phases.save_checkpoint = after
    sys.exit(main(sys.argv[2:]))
""")


def _cli_args(cfg, runs_dir: Path) -> list[str]:
    return ["compare", str(cfg.data_dir), "--backbone", cfg.backbone, "--image-size", str(cfg.recipe.image_size_px),
            "--scratch-epochs", "2", "--frozen-epochs", "2", "--finetune-epochs", "2", "--unfreeze-last",
            str(cfg.recipe.unfreeze.count), "--batch-size", str(cfg.batch_size), "--runs-dir", str(runs_dir),
            "--cache-dir", str(cfg.cache_dir), "--engine", "torch", "--no-final-fit", "--quiet"]  # as tiny_config


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_at_each_stage_then_resume_equals_uninterrupted(stage, small_data, reference, tmp_path):
    cfg = tiny_config(small_data, tmp_path, **EPOCHS)
    killed = subprocess.run([sys.executable, "-c", DRIVER, stage, *_cli_args(cfg, tmp_path / "runs")],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if stage == "decode":  # before a run folder exists: the same command again, on the decoded cache
        assert not (tmp_path / "runs").exists()
        assert main(_cli_args(cfg, tmp_path / "runs")) == 0
        run_dir, = (tmp_path / "runs").iterdir()
        assert metrics_rows(run_dir) == metrics_rows(reference) and _accuracies(run_dir) == _accuracies(reference)
        return
    run_dir, = (tmp_path / "runs").iterdir()
    assert not (run_dir / "results.json").exists()
    for path in run_dir.rglob("*.json*"):  # whatever was written is whole
        [json.loads(line) for line in path.read_text().splitlines()] if path.suffix == ".jsonl" \
            else json.loads(path.read_text())
    assert main(["compare", "--resume", str(run_dir), "--quiet"]) == 0
    assert metrics_rows(run_dir) == metrics_rows(reference)
    assert _accuracies(run_dir) == _accuracies(reference)


def test_sigterm_in_a_child_exits_130_with_the_resume_command(small_data, tmp_path):
    cfg = tiny_config(small_data, tmp_path, **EPOCHS)
    driver = DRIVER.replace("signal.SIGKILL", "signal.SIGTERM")
    stopped = subprocess.run([sys.executable, "-c", driver, "frozen", *_cli_args(cfg, tmp_path / "runs")],
                             capture_output=True, text=True, timeout=300)
    run_dir, = (tmp_path / "runs").iterdir()
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().endswith(f"transferlab compare --resume {run_dir}")


@pytest.fixture
def interrupted_run(small_data, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A copy of the data and a run on it stopped after the first frozen epoch."""
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    with monkeypatch.context() as patch:
        _signal_at("frozen", patch, lambda: os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(RunInterrupted) as stopped:
            compare(tiny_config(data, tmp_path, **EPOCHS))
    return data, stopped.value.run_dir


def _resume_error(run_dir: Path, capsys) -> str:
    assert main(["compare", "--resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_resume_refuses_a_removed_image(interrupted_run, capsys):
    data, run_dir = interrupted_run
    victim = sorted((data / "Coat").iterdir())[3]
    victim.unlink()
    err = _resume_error(run_dir, capsys)
    assert "removed" in err and victim.name in err


def test_resume_refuses_a_changed_image(interrupted_run, capsys):
    data, run_dir = interrupted_run
    victim = sorted((data / "Dress").iterdir())[5]
    other = sorted((data / "Shirt").iterdir())[0]
    victim.write_bytes(other.read_bytes())
    err = _resume_error(run_dir, capsys)
    assert "changed" in err and victim.name in err


def test_resume_after_the_data_folder_moved_says_where_the_run_looked(interrupted_run, capsys):
    """Before: 'data folder … does not exist; expected DIR/<class_name>/<images> …', a layout hint for a folder
    the user never typed on this command line."""
    data, run_dir = interrupted_run
    data.rename(data.with_name("renamed"))
    assert main(["compare", "--resume", str(run_dir), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: run '{run_dir}' trained on '{data}' (data folder), which no longer "
                                       "exists; put the data back there to resume, or start a new run\n")


def test_resume_refuses_an_added_image(interrupted_run, capsys):
    data, run_dir = interrupted_run
    shutil.copy(sorted((data / "Dress").iterdir())[0], data / "Dress" / "new.png")
    err = _resume_error(run_dir, capsys)
    assert "new.png" in err and "changed" in err


def test_resume_refuses_other_options(interrupted_run, capsys):
    _, run_dir = interrupted_run
    assert main(["compare", "--resume", str(run_dir), "--seed", "3", "--finetune-lr=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "--finetune-lr" in err and err.count("\n") == 1


def test_config_json_holds_the_resolved_config(interrupted_run, monkeypatch, tmp_path):
    _, run_dir = interrupted_run
    stored = json.loads((run_dir / "config.json").read_text())
    cfg, env = stored["config"], stored["environment"]
    assert cfg["backbone"] == "tf_efficientnet_lite0" and cfg["image_size_px"] == 32
    assert all(Path(cfg[k]).is_absolute() for k in ("data_dir", "runs_dir", "cache_dir"))
    assert env["torch_threads"] >= 1 and env["versions"]["torch"] and env["weights"]["fingerprint"]
    monkeypatch.chdir(tmp_path.parent)  # a resume from another working directory finds the same data
    resume(run_dir, show_progress=False)
    assert (run_dir / "results.json").exists()


def test_resume_with_sub_folders_in_classes_equals_uninterrupted(small_data, tmp_path, monkeypatch):
    """A resume lists files in scan order (os.walk): the split must put them back in the first run's order."""
    data = tmp_path / "nested"
    for class_dir in sorted(small_data.iterdir()):
        for i, image in enumerate(sorted(class_dir.iterdir())):
            # os.walk lists a folder's own files before its sub-folders; sorted paths put "a_sub/" first
            target = data / class_dir.name / ("a_sub" if i % 2 else "") / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target)
    reference = compare(tiny_config(data, tmp_path / "reference", **EPOCHS))
    with monkeypatch.context() as patch:
        _signal_at("frozen", patch, lambda: os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(RunInterrupted) as stopped:
            compare(tiny_config(data, tmp_path / "stopped", **EPOCHS))
    resume(stopped.value.run_dir, show_progress=False)
    assert metrics_rows(stopped.value.run_dir) == metrics_rows(reference)


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign", "another phase"])
def test_a_damaged_or_foreign_checkpoint_is_one_line_naming_it(damage, tmp_path):
    """Checkpoints hold only what their phase can change; loading one into the wrong model must not
    quietly load nothing."""
    import torch

    from transferlab.errors import UserError
    from transferlab.experiments.run_dir import checkpoint_path, load_checkpoint, save_checkpoint
    from transferlab.training.loop import PhaseState

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    state = PhaseState(next_epoch=1, history=[], best_epoch=1, best_val_acc=0.5, best_state=model.state_dict())
    save_checkpoint(tmp_path, "frozen", model, optimizer, state, {"0.weight", "0.bias"})
    path = checkpoint_path(tmp_path, "frozen")
    assert set(torch.load(path, weights_only=True)["module"]) == {"0.weight", "0.bias"}
    if damage in ("truncated", "empty"):
        path.write_bytes(path.read_bytes()[:100] if damage == "truncated" else b"")
        target = model
    elif damage == "another phase":  # e.g. finetuned.pt copied over frozen.pt: it loads, its optimizer would not
        save_checkpoint(tmp_path, "frozen", model, optimizer, state, set(model.state_dict()))
        target = model
    else:
        target = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(4, 3))  # no "0.weight"
    message = rf"^checkpoint '{path}' cannot be read \(.*\); delete it to redo the frozen phase$"
    with pytest.raises(UserError, match=message) as e:
        load_checkpoint(tmp_path, "frozen", target, {"0.weight", "0.bias"})
    assert "\n" not in str(e.value)
    if damage == "empty":  # torch.load raises a bare EOFError: its type is what the line can say
        assert "(EOFError)" in str(e.value)


def test_a_checkpoint_of_a_module_with_buffers_kept_out_of_its_state_dict_resumes(tmp_path):
    """timm's Swin, LeViT and BEiT keep index tables as non-persistent buffers: what the phase changes is what
    its checkpoint holds, so a scratch phase of those resumes (a key-set check once refused it)."""
    import torch

    from transferlab.experiments.run_dir import load_checkpoint, save_checkpoint
    from transferlab.models.freezing import changing_state_keys
    from transferlab.training.loop import PhaseState

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model[0].register_buffer("index_table", torch.arange(3), persistent=False)
    changing = changing_state_keys(model, [model])  # the scratch phase: everything trains
    assert changing == set(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = PhaseState(next_epoch=1, history=[], best_epoch=1, best_val_acc=0.5, best_state=model.state_dict())
    save_checkpoint(tmp_path, "scratch", model, optimizer, state, changing)
    _, loaded = load_checkpoint(tmp_path, "scratch", model, changing_state_keys(model, [model]))
    assert loaded.next_epoch == 1


def test_sigint_in_the_final_fit_then_resume_equals_uninterrupted(small_data, tmp_path, monkeypatch):
    """The final fit's phases checkpoint into run_dir/final under the same names as the selection's."""
    cfg = tiny_config(small_data, tmp_path / "reference", final_fit=True, skip_scratch=True, **EPOCHS)
    uninterrupted = compare(cfg)
    original = phases_module.save_checkpoint

    def stop_in_the_final_fit(run_dir, phase, *args):
        original(run_dir, phase, *args)
        if Path(run_dir).name == "final":
            os.kill(os.getpid(), signal.SIGINT)
    with monkeypatch.context() as patch:
        patch.setattr(phases_module, "save_checkpoint", stop_in_the_final_fit)
        with pytest.raises(RunInterrupted) as stopped:
            compare(tiny_config(small_data, tmp_path / "stopped", final_fit=True, skip_scratch=True, **EPOCHS))
    run_dir = stopped.value.run_dir
    assert (run_dir / "final" / "checkpoints").is_dir() and not (run_dir / "results.json").exists()
    resume(run_dir, show_progress=False)
    for name in ("metrics.jsonl", "final/metrics.jsonl"):
        assert metrics_rows(run_dir / Path(name).parent) == metrics_rows(uninterrupted / Path(name).parent)
    assert _accuracies(run_dir) == _accuracies(uninterrupted)
    finals = [json.loads((d / "results.json").read_text())["phases"]["final"] for d in (run_dir, uninterrupted)]
    assert finals[0]["train_acc"] == finals[1]["train_acc"] and finals[0]["fit_of"] == finals[1]["fit_of"]
