"""Mirror a run to TensorBoard and/or MLflow as it trains: its config, every epoch of every phase, the final
numbers and (MLflow) its report. The run folder stays the record; these are views of it for the tools teams
already watch.

Both writers are optional extras, imported only when asked for. It lives beside the run folder code, not in
reporting/, because the experiment opens and feeds it while training (and reporting reads experiments).
Under torchrun only rank 0 opens a `Tracker`; the other ranks pass no sink.
"""

import importlib
import importlib.util
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from transferlab.atomic import write_json_atomic
from transferlab.errors import UserError, error_text
from transferlab.results import RunResult

TRACKING_FILE = "tracking.json"   # in the run folder: the MLflow run id, so --resume continues that run
MLFLOW_EXPERIMENT = "transferlab"
MLFLOW_BATCH = 100                # MLflow's limit of params per log_batch call
EPOCH_METRICS = {"train_loss": "train_loss", "train_acc": "train_acc", "val_loss": "val_loss",
                 "val_acc": "val_acc", "learning_rate": "learning_rate", "seconds": "epoch_seconds"}
FINAL_METRICS = ("train_acc", "val_acc", "test_acc", "seconds")
FILE_SCHEMES = ("", "file")
SERVER_SCHEMES = ("http", "https", "databricks")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
EXTRAS = {"tensorboardX": ("--tensorboard", "tensorboard"), "mlflow": ("--mlflow-uri", "mlflow")}


def _require(module: str):
    option, extra = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{option} needs the optional extra: pip install 'transferlab[{extra}]'") from None


def check_tracking_options(tensorboard_dir: Path | None, mlflow_uri: str | None) -> None:
    """A missing extra or a URI MLflow would refuse fails here, when the config is built: before any folder."""
    if tensorboard_dir is not None:
        if Path(tensorboard_dir).exists() and not Path(tensorboard_dir).is_dir():
            raise UserError(f"--tensorboard '{tensorboard_dir}' is a file; give a folder for the event files")
        _require("tensorboardX")
    if mlflow_uri is None:
        return
    scheme = urlparse(mlflow_uri).scheme.split("+")[0]  # postgresql+psycopg2://…
    if not mlflow_uri.strip() or scheme not in FILE_SCHEMES + SERVER_SCHEMES + DATABASE_SCHEMES:
        raise UserError(f"--mlflow-uri '{mlflow_uri}' is not a tracking URI MLflow serves; give http(s)://HOST:PORT, "
                        "sqlite:///mlflow.db or file:///ABSOLUTE/PATH")
    _require("mlflow")
    if scheme in DATABASE_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
        raise UserError(f"--mlflow-uri {scheme}:// needs MLflow's database store, which mlflow-skinny lacks: "
                        "pip install mlflow")
    allow_file_store = getattr(importlib.import_module("mlflow.environment_variables"), "MLFLOW_ALLOW_FILE_STORE",
                               None)
    if scheme in FILE_SCHEMES and allow_file_store is not None and not allow_file_store.get():
        raise UserError(f"--mlflow-uri '{mlflow_uri}': this MLflow refuses its file store unless "
                        "MLFLOW_ALLOW_FILE_STORE=true is set; set it, or use sqlite:///mlflow.db or a tracking server")


def run_params(config_json: dict) -> dict[str, bool | int | float | str]:
    """config.json's resolved config and recipe as flat `config.x` / `recipe.x` params (None left out)."""
    flat = {}
    for section in ("config", "recipe"):
        for key, value in config_json.get(section, {}).items():
            if value is not None:
                flat[f"{section}.{key}"] = value if isinstance(value, bool | int | float | str) else json.dumps(value)
    return flat


def final_metrics(results: RunResult) -> dict[str, float]:
    """What a finished run measured, per phase: `final/<phase>/<metric>`."""
    return {f"final/{phase}/{metric}": float(getattr(summary, metric)) for phase, summary in results.phases.items()
            for metric in FINAL_METRICS if getattr(summary, metric) is not None}


class Tracker:
    """The open writers of one run. `log_epoch` is the sink the phases feed, once per finished epoch."""

    def __init__(self, run_dir: Path, name: str, params: dict, tensorboard_dir: Path | None,
                 mlflow_uri: str | None, resuming: bool):
        self.tensorboard, self.mlflow, self.run_id, self.params = None, None, None, params
        if tensorboard_dir is not None:
            # one sub-folder per run, so `tensorboard --logdir DIR` lists runs side by side; a resumed run adds
            # an event file to the same folder and TensorBoard joins them. Event files are named by the second
            # and host: a resume within the same second would reopen the first one, so each gets its own suffix
            suffix = f".{os.getpid()}-{time.time_ns()}"
            self.tensorboard = _require("tensorboardX").SummaryWriter(logdir=str(Path(tensorboard_dir) / name),
                                                                       filename_suffix=suffix)
            if not resuming:
                self.tensorboard.add_text("config", "```json\n" + json.dumps(params, indent=1) + "\n```", 0)
        if mlflow_uri is not None:
            self.mlflow = _require("mlflow").MlflowClient(mlflow_uri)
            try:
                self.run_id = _mlflow_run(self.mlflow, mlflow_uri, run_dir, name, params, resuming)
            except importlib.import_module("mlflow.exceptions").MlflowException as e:
                raise UserError(f"--mlflow-uri '{mlflow_uri}': {error_text(e, 200)}") from None

    def log_epoch(self, row: dict) -> None:
        """`row` is a metrics.jsonl row (phase, epoch, losses, accuracies, seconds) plus its last learning rate."""
        metrics = {f"{row['phase']}/{name}": float(row[key]) for key, name in EPOCH_METRICS.items() if key in row}
        self._log(metrics, step=row["epoch"])

    def log_results(self, results: RunResult) -> None:
        metrics = final_metrics(results)
        self._log(metrics, step=0)
        if self.tensorboard is not None:  # the HPARAMS tab: this run's recipe beside its final accuracies
            self.tensorboard.add_hparams(self.params, {f"hparams/{k.removeprefix('final/')}": v
                                                       for k, v in metrics.items()}, name="hparams")

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self.tensorboard is not None:
            for tag, value in metrics.items():
                self.tensorboard.add_scalar(tag, value, step)
            self.tensorboard.flush()  # a killed run keeps every epoch it checkpointed
        if self.mlflow is not None:
            now_ms = int(time.time() * 1000)
            Metric = importlib.import_module("mlflow.entities").Metric  # noqa: N806
            self.mlflow.log_batch(self.run_id, metrics=[Metric(k, v, now_ms, step) for k, v in metrics.items()])

    def close(self, status: str) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow is not None and status != "FINISHED":  # a finished run is closed by log_report
            self.mlflow.set_terminated(self.run_id, status)


def _mlflow_run(client, uri: str, run_dir: Path, name: str, params: dict, resuming: bool) -> str:
    """The run id stored in the run folder when resuming (back to RUNNING), else a new run, its id stored."""
    stored = run_dir / TRACKING_FILE
    if resuming and stored.exists():
        run_id = json.loads(stored.read_text())["mlflow_run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(MLFLOW_EXPERIMENT)
    run_id = client.create_run(experiment_id, run_name=name).info.run_id
    write_json_atomic(stored, {"mlflow_run_id": run_id, "mlflow_uri": uri})
    Param = importlib.import_module("mlflow.entities").Param  # noqa: N806
    items = [Param(k, str(v)) for k, v in params.items()]
    for start in range(0, len(items), MLFLOW_BATCH):
        client.log_batch(run_id, params=items[start:start + MLFLOW_BATCH])
    return run_id


@contextmanager
def tracking(run_dir: Path, tensorboard_dir: Path | None, mlflow_uri: str | None,
             resuming: bool) -> Iterator[Tracker | None]:
    """A Tracker for the run while the body trains (None when no option asked for one). An exception or an
    interrupt leaves the MLflow run KILLED until --resume reopens it."""
    if tensorboard_dir is None and mlflow_uri is None:
        yield None
        return
    params = run_params(json.loads((run_dir / "config.json").read_text()))
    tracker = Tracker(run_dir, run_dir.name, params, tensorboard_dir, mlflow_uri, resuming)
    status = "KILLED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        tracker.close(status)


def log_report(run_dir: Path, files: tuple[str, ...] = ("report.md", "report.html", "results.json",
                                                        "config.json")) -> None:
    """After the report is written: attach it to the run's MLflow run and mark that run FINISHED."""
    stored = run_dir / TRACKING_FILE
    if not stored.exists():
        return
    ids = json.loads(stored.read_text())
    client = _require("mlflow").MlflowClient(ids["mlflow_uri"])
    for name in files:
        client.log_artifact(ids["mlflow_run_id"], os.fspath(run_dir / name))
    client.set_terminated(ids["mlflow_run_id"], "FINISHED")
