"""--tensorboard and --mlflow-uri: what a run (interrupted and resumed) logged, read back with each tool's reader."""

import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from transferlab import resume
from transferlab.cli import main
from transferlab.experiments import phases as phases_module
from transferlab.experiments.tracking import TRACKING_FILE

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
mlflow = pytest.importorskip("mlflow")

EPOCH_TAGS = {"train_loss": "train_loss", "train_acc": "train_acc", "val_loss": "val_loss", "val_acc": "val_acc",
              "epoch_seconds": "seconds"}


@pytest.fixture(scope="module")
def tracked_run(small_data, tmp_path_factory) -> tuple[Path, Path, str]:
    """A tiny compare run with both sinks, stopped by SIGINT after fine-tuning's first epoch, then resumed."""
    tmp = tmp_path_factory.mktemp("tracked")
    cfg = tiny_config(small_data, tmp)
    mlflow_uri = (tmp / "mlruns").as_uri()
    args = ["compare", str(small_data), "--backbone", cfg.backbone, "--image-size", "32", "--scratch-epochs", "1",
            "--frozen-epochs", "2", "--finetune-epochs", "2", "--unfreeze-last", "6", "--batch-size", "16",
            "--test-fraction", "0.2", "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"), "--engine",
            "torch", "--no-final-fit", "--quiet", "--tensorboard", str(tmp / "tb"), "--mlflow-uri", mlflow_uri]
    original = phases_module.save_checkpoint

    def stop_in_finetuning(run_dir, phase, *rest):
        original(run_dir, phase, *rest)
        if phase == "finetuned":
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store without it
        patch.setattr(phases_module, "save_checkpoint", stop_in_finetuning)
        assert main(args) == 130
        run_dir, = (tmp / "runs").iterdir()
        patch.setattr(phases_module, "save_checkpoint", original)
        first_id = json.loads((run_dir / TRACKING_FILE).read_text())["mlflow_run_id"]
        assert mlflow.MlflowClient(mlflow_uri).get_run(first_id).info.status == "KILLED"
        resume(run_dir, show_progress=False)
    assert json.loads((run_dir / TRACKING_FILE).read_text())["mlflow_run_id"] == first_id
    return run_dir, tmp / "tb", mlflow_uri


def _expected_learning_rates(results: dict, phase: str) -> list[float]:
    """The rate of each epoch's last step, from the recipe's schedule."""
    summary, recipe = results["phases"][phase], results["recipe"]
    epochs = len(summary["epochs"])
    per_epoch = summary["steps"] // epochs
    return [_warmup_cosine((e + 1) * per_epoch - 1, epochs * per_epoch, summary["learning_rate"], recipe["schedule"])
            for e in range(epochs)]


def _warmup_cosine(step: int, total: int, rate: float, schedule: str) -> float:
    """The rate at a step, written out: 10% linear warm-up ((s + 1) / warm-up), then cosine decay to zero."""
    if schedule == "constant" or total <= 1:
        return rate
    warmup = max(1, round(0.1 * total))
    if step < warmup:
        return rate * (step + 1) / warmup
    return rate * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_tensorboard_holds_every_epoch_once_with_the_stored_values(tracked_run):
    run_dir, tb_dir, _ = tracked_run
    results = json.loads((run_dir / "results.json").read_text())
    events = event_accumulator.EventAccumulator(str(tb_dir / run_dir.name), size_guidance={"scalars": 0}).Reload()
    assert len(list((tb_dir / run_dir.name).glob("events.out.tfevents.*"))) == 2  # the run and its resume
    for phase, summary in results["phases"].items():
        for tag, key in EPOCH_TAGS.items():
            points = events.Scalars(f"{phase}/{tag}")
            assert [p.step for p in points] == [r["epoch"] for r in summary["epochs"]]
            assert [p.value for p in points] == pytest.approx([r[key] for r in summary["epochs"]], rel=1e-6)
        rates = [p.value for p in events.Scalars(f"{phase}/learning_rate")]
        assert rates == pytest.approx(_expected_learning_rates(results, phase), rel=1e-6)
        assert events.Scalars(f"final/{phase}/test_acc")[0].value == pytest.approx(summary["test_acc"])
    assert [len(results["phases"][p]["epochs"]) for p in ("frozen", "finetuned", "scratch")] == [2, 2, 1]
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"config.backbone": "tf_efficientnet_lite0"' in config_text
    assert list((tb_dir / run_dir.name / "hparams").glob("events.out.tfevents.*"))


def test_mlflow_run_holds_params_metric_histories_and_the_report(tracked_run):
    run_dir, _, mlflow_uri = tracked_run
    results = json.loads((run_dir / "results.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(json.loads((run_dir / TRACKING_FILE).read_text())["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["config.backbone"] == "tf_efficientnet_lite0"
    assert run.data.params["recipe.schedule"] == config["recipe"]["schedule"]
    assert run.data.params["config.seed"] == "42"
    for phase, summary in results["phases"].items():
        for tag, key in EPOCH_TAGS.items():
            history = sorted(client.get_metric_history(run.info.run_id, f"{phase}/{tag}"), key=lambda m: m.step)
            assert [(m.step, m.value) for m in history] == [(r["epoch"], r[key]) for r in summary["epochs"]]
        rates = [m.value for m in sorted(client.get_metric_history(run.info.run_id, f"{phase}/learning_rate"),
                                         key=lambda m: m.step)]
        assert rates == pytest.approx(_expected_learning_rates(results, phase), rel=1e-12)
        assert run.data.metrics[f"final/{phase}/test_acc"] == summary["test_acc"]
        assert run.data.metrics[f"final/{phase}/val_acc"] == summary["val_acc"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "report.html", "results.json", "config.json"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "results.json", str(run_dir.parent)))
    assert json.loads(local.read_text()) == results


@pytest.mark.parametrize("option, module, extra", [("--tensorboard", "tensorboardX", "tensorboard"),
                                                   ("--mlflow-uri", "mlflow", "mlflow")])
def test_a_missing_extra_is_one_line_naming_the_install_and_writes_nothing(option, module, extra, small_data,
                                                                           tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    value = str(tmp_path / "tb") if option == "--tensorboard" else (tmp_path / "mlruns").as_uri()
    assert main(["compare", str(small_data), option, value, "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {option} needs the optional extra: pip install 'transferlab[{extra}]'\n"
    assert list(tmp_path.iterdir()) == []


def test_mlflow_file_store_without_mlflows_opt_in_is_refused_up_front(small_data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert main(["demo", "--mlflow-uri", str(tmp_path / "mlruns"), "--runs-dir", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "MLFLOW_ALLOW_FILE_STORE=true" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_study_refuses_tracking_options(small_data, tmp_path, capsys):
    assert main(["study", str(small_data), "--tensorboard", str(tmp_path / "tb"), "--runs-dir",
                 str(tmp_path / "runs"), "--quiet"]) == 2
    assert "a study does not log to them yet" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
