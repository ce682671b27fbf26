"""torchrun with 2 CPU processes (gloo) against one process, on real small data: same numbers, one writer.

Tolerances, measured on this data: with dropout off, the head and fine-tune phases of 2 ranks match one
process to 2e-7 in every loss and exactly in every accuracy (DDP averages the two halves of each global
batch; only the summation order differs), so 1e-5 and exact counts are asserted. The scratch phase trains
BatchNorm on each rank's half batch (no SyncBatchNorm on CPU), so its numbers are close, not equal
(measured |delta| 0.036 train loss, 5e-4 val loss). With dropout on, each rank draws its own masks: the
runs are statistically alike, not equal, which is why the comparison turns dropout off.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from torch import nn

from transferlab import compare
from transferlab.errors import UserError
from transferlab.training.devices import resolve_device
from transferlab.training.distributed import Ranks
from transferlab.training.inputs import CachedInputs
from transferlab.training.loop import PhaseSpec, train_phase

TINY_OPTIONS = ["--backbone", "tf_efficientnet_lite0", "--image-size", "32", "--unfreeze-last", "6",
                "--batch-size", "16", "--engine", "torch", "--quiet"]  # as tiny_config: + --no-final-fit on compare
EXACT_PHASES = ("frozen", "finetuned")
LOSS_TOLERANCE = 1e-5


def _torchrun(args: list[str], logs: Path) -> None:
    """`torchrun --standalone --nproc_per_node 2 -m transferlab ARGS`, each rank's output in its own files."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--log-dir", str(logs), "--redirects", "3", "-m", "transferlab", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] + "".join(p.read_text()[-3000:] for p in logs.rglob("*.log"))


def _rank_output(logs: Path, rank: int, stream: str) -> str:
    return next(logs.rglob(f"{rank}/{stream}.log")).read_text()


def _one_thread(run):
    """torchrun gives each rank one thread: the reference runs with one too (CPU sums depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run()
    finally:
        torch.set_num_threads(threads)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_ranks_train_like_one_process_and_only_rank_0_writes(small_data, tmp_path):
    cfg = tiny_config(small_data, tmp_path / "one", head_dropout=0.0, test_fraction=0.2)
    reference = _one_thread(lambda: compare(cfg))
    runs, logs = tmp_path / "two" / "runs", tmp_path / "logs"
    _torchrun(["compare", str(small_data), *TINY_OPTIONS, "--scratch-epochs", "1", "--frozen-epochs", "2",
               "--finetune-epochs", "2", "--head-dropout", "0", "--test-fraction", "0.2", "--no-final-fit",
               "--runs-dir", str(runs),
               "--cache-dir", str(tmp_path / "two" / "cache")], logs)

    [run_dir] = list(runs.iterdir())  # rank 1 made no run folder of its own
    assert "fine-tuned" in _rank_output(logs, 0, "stdout") and _rank_output(logs, 1, "stdout") == ""
    assert "error" not in _rank_output(logs, 1, "stderr")
    assert not list(run_dir.rglob(".*.tmp"))
    one, two = json.loads((reference / "results.json").read_text()), json.loads((run_dir / "results.json").read_text())
    assert two["environment"]["world_size"] == 2 and one["environment"]["world_size"] == 1

    rows_one, rows_two = _metrics(reference), _metrics(run_dir)
    assert [(r["phase"], r["epoch"]) for r in rows_one] == [(r["phase"], r["epoch"]) for r in rows_two]
    for a, b in zip(rows_one, rows_two):
        if a["phase"] in EXACT_PHASES:
            assert (a["train_acc"], a["val_acc"]) == (b["train_acc"], b["val_acc"]), (a, b)
            assert abs(a["train_loss"] - b["train_loss"]) < LOSS_TOLERANCE
            assert abs(a["val_loss"] - b["val_loss"]) < LOSS_TOLERANCE
        else:  # per-rank BatchNorm statistics: close, not equal
            assert abs(a["train_loss"] - b["train_loss"]) < 0.1 and abs(a["val_loss"] - b["val_loss"]) < 0.01
    for phase in EXACT_PHASES:
        assert one["phases"][phase]["test_acc"] == two["phases"][phase]["test_acc"]
        assert one["phases"][phase]["best_epoch"] == two["phases"][phase]["best_epoch"]
    assert one["model_phase"] == two["model_phase"]

    # the backbone pass was shared: each rank wrote a segment of its half into the one store
    index = json.loads(next((tmp_path / "two" / "cache" / "prefix").glob("*/index.json")).read_text())
    keys = [k for segment in index["segments"] for k in segment["keys"]]
    assert len(index["segments"]) >= 2 and len(keys) == len(set(keys))


def test_a_rank_without_images_in_a_batch_or_a_pinned_gpu_is_a_one_line_error():
    module = nn.Linear(2, 2)
    inputs = CachedInputs([np.zeros((18, 2), np.float32)], torch.device("cpu"))
    spec = PhaseSpec(name="frozen", epochs=1, learning_rate=1e-3, batch_size=16, seed=0)
    with pytest.raises(UserError, match=r"4 ranks share each batch, but a batch of the frozen phase has 2 images"):
        train_phase(module, module, inputs, np.zeros(18, np.int64), inputs, np.zeros(18, np.int64), spec, [module],
                    torch.device("cpu"), ranks=Ranks(0, 4))
    with pytest.raises(UserError, match="--device cuda:1 would put every rank on one GPU"):
        resolve_device("cuda:1", Ranks(1, 2, 1))
