"""A study's cells as Ray tasks (`transferlab study DATA --ray local|auto|ADDRESS`; the optional extra `[ray]`).

The driver (the `transferlab study` process) plans, decodes into the cache, draws the split, and is the only
writer of the study folder's config.json, split.json, results.json and report; each task trains one cell into
its own folder cells/<hash>/, as a cell does in one process. A task is sent its plan (paths, no pixels) and
a RayStudy; the worker rebuilds the rest from the study folder, the cache and the config (backbone, decoded
pixels from the cache, the split from split.json), so the study folder and the cache must be on a filesystem
every node mounts at the same path. It checks that it sees the folder (a token the driver wrote there) and that
what it rebuilt hashes to the cell the driver planned (same data, weights and library versions).

Faults: a task whose worker dies, or that raises, runs once more (Ray's max_retries), resuming from the cell's
checkpoints; after two failures the cell is listed in results.json's `failed` and the rest of the study goes
on. A UserError (the user's to fix) is returned, not raised, so Ray does not retry it; the driver then stops
the study with it, as a study in one process does. Ctrl-C on the driver cancels every task; the same command
resumes.
"""

import functools
import logging
import os
import socket
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import torch

from transferlab.atomic import write_text_atomic
from transferlab.errors import UserError, error_text, one_line, quoted
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.datasets import prepare_data, scan_folders, subset_of
from transferlab.experiments.interrupts import StopRequests
from transferlab.experiments.run_dir import environment
from transferlab.experiments.study import (STUDY_DATA_CHANGED, ScreenedTestSet, StudyRun, finished_cell,
                                           run_cell_plan)
from transferlab.experiments.study_config import StudyConfig
from transferlab.experiments.study_plan import CellPlan, cell_key
from transferlab.models.backbones import load_backbone
from transferlab.results import CellResult, FailedCell

MAX_RETRIES = 1  # a cell runs at most twice: a second failure is the cell's, not a passing fault of its worker
DRIVER_TOKEN_FILE = ".ray-driver-token"  # in the study folder, for as long as the driver runs
# Tests only: a file path. The first cell to checkpoint an epoch while that file exists renames it to
# <path>.<cell hash> (touching it: the time of the crash) and kills its own worker, as a crash would.
EXIT_ONCE_ENV = "TRANSFERLAB_TEST_EXIT_ONCE"


@dataclass(frozen=True)
class RayStudy:
    """What every task receives besides its plan: enough for the worker to rebuild the rest."""

    study_dir: Path
    base: CompareConfig         # the study's resolved config: data folders, cache, backbone, recipe
    device_type: str            # "cpu" or "cuda": a task's GPU is the one Ray gives it
    threads: int                # torch threads per cell; the task asks Ray for as many CPUs
    gpus: float                 # GPUs per task: 1 / --cells-per-gpu with cuda, else 0
    token: str                  # what the driver wrote into DRIVER_TOKEN_FILE


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray, an optional extra: pip install 'transferlab[ray]'") from None
    return ray


@contextmanager
def connected(cfg: StudyConfig, device: torch.device) -> Iterator[None]:
    """Ray as --ray says ('local' starts it on this machine and stops it after; a caller that already ran
    ray.init keeps its connection), with a node that can hold a cell."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if cfg.ray not in ("local", "auto"):
        _check_reachable(cfg.ray)
    if started_here:
        try:
            ray.init(address=None if cfg.ray == "local" else cfg.ray, logging_level=logging.WARNING)
        except ConnectionError as e:
            why = one_line(str(e)).split(". ")[0]  # Ray's first sentence says it; the rest is its own advice
            raise UserError(f"--ray {cfg.ray}: no Ray cluster there ({why}); start one with `ray start --head`, or "
                            "give --ray local") from None
    try:
        _check_a_node_fits(ray, torch.get_num_threads(), _gpus_per_cell(cfg, device))
        yield
    finally:
        if started_here:
            ray.shutdown()


CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """A TCP connection to the head first: Ray itself waits minutes on an address nobody answers. (StudyConfig
    checked that the address is HOST:PORT.)"""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(f"--ray {address}: nothing answers there ({e.strerror or 'no answer'}, waited at most "
                        f"{CONNECT_TIMEOUT_S:g} s); start the head with `ray start --head`, check the "
                        "address and firewall, or give --ray local") from None


@contextmanager
def driving(cfg: StudyConfig, study_dir: Path, base: CompareConfig, device: torch.device) -> Iterator[RayStudy]:
    """The study's RayStudy, with the token its tasks look for in the study folder (written once the driver
    holds the folder's lock, removed when it is done)."""
    remote = RayStudy(study_dir, base, device.type, torch.get_num_threads(), _gpus_per_cell(cfg, device),
                      uuid.uuid4().hex)
    token_file = study_dir / DRIVER_TOKEN_FILE
    write_text_atomic(token_file, remote.token)
    try:
        yield remote
    finally:
        token_file.unlink(missing_ok=True)


def _gpus_per_cell(cfg: StudyConfig, device: torch.device) -> float:
    return 1 / cfg.cells_per_gpu if device.type == "cuda" else 0.0


def _check_a_node_fits(ray, threads: int, gpus: float) -> None:
    """A task no node can hold would wait forever: refuse it in one line instead."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if threads > cpus:
        raise UserError(f"--cell-threads {threads}: no Ray node has that many CPUs (the largest has {cpus:g}); "
                        f"give --cell-threads {max(int(cpus), 1)} or fewer")
    if gpus and not any(n.get("GPU", 0) >= gpus for n in nodes):
        raise UserError("--device cuda: no Ray node has a GPU; add GPU nodes to the cluster or give --device cpu")


def run_on_ray(plans: list[CellPlan], order: list[int], run: StudyRun
               ) -> Iterator[tuple[int, CellResult | FailedCell]]:
    """(position in `plans`, outcome) as each cell finishes: finished cells at once, the others submitted in
    `order` as tasks. Closing the iterator (Ctrl-C, a UserError) cancels the tasks still running."""
    ray = import_ray()
    remote = run.ray
    task = ray.remote(_run_cell_task).options(num_cpus=remote.threads, num_gpus=remote.gpus,
                                              max_retries=MAX_RETRIES, retry_exceptions=True)
    reused = {i: finished_cell(plans[i], run.study_dir) for i in order}
    pending = {task.remote(plans[i], remote): i for i in order if reused[i] is None}
    try:
        yield from ((i, row) for i, row in reused.items() if row is not None)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ref)
            yield i, _outcome(ray, ref, plans[i])
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def _outcome(ray, ref, plan: CellPlan) -> CellResult | FailedCell:
    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as e:  # raised twice, or its worker died twice
        cause = getattr(e, "cause", None)  # a RayTaskError holds what the task raised
        error = f"{type(cause).__name__}: {error_text(cause, 1000)}" if cause is not None else error_text(e, 1000)
        return FailedCell(part=plan.variant.label, hash=plan.hash, seed=plan.seed, k=plan.k_label, error=error)
    if isinstance(result, UserError):
        raise result
    return result


def _run_cell_task(plan: CellPlan, remote: RayStudy) -> CellResult | UserError:
    """One cell on a Ray worker, rebuilt from the shared study folder, cache and config."""
    try:
        torch.set_num_threads(remote.threads)
        check_sees_study(remote)
        run = rebuild_run(remote, plan.variant.backbone)
        check_same_cell(plan, run)
        return run_cell_plan(plan, run, functools.partial(_exit_once, run.study_dir / "cells" / plan.hash))
    except UserError as e:
        return e


def check_sees_study(remote: RayStudy) -> None:
    token_file = remote.study_dir / DRIVER_TOKEN_FILE
    try:
        seen = token_file.read_text()
    except OSError:
        seen = None
    if seen != remote.token:
        raise UserError(f"the Ray worker on {socket.gethostname()} cannot see the study folder "
                        f"{quoted(remote.study_dir)} (no {DRIVER_TOKEN_FILE} of this run there); put --study-dir "
                        "and --cache-dir on a filesystem every Ray node mounts at the same path")


def rebuild_run(remote: RayStudy, backbone: str) -> StudyRun:
    """What a cell needs, rebuilt as the driver built it: the backbone, the decoded images from the shared cache,
    the split from split.json (read, never written: the driver writes). The driver already warned about
    anything the data holds, so the rebuild's warnings are not repeated."""
    base = replace(remote.base, show_progress=False)  # the driver's bar counts cells
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folders = scan_folders(base)
        pretrained = load_backbone(backbone, base.weights if backbone == base.backbone else None,
                                   base.recipe.image_size_px)
        prepared = prepare_data(base, folders, pretrained.preprocessing, remote.study_dir,
                                data_changed_fix=STUDY_DATA_CHANGED, read_only=True)
    device = torch.device(remote.device_type)
    return StudyRun(remote.study_dir, folders, pretrained, prepared.split, ScreenedTestSet(prepared, base), device,
                    StopRequests(), environment(device, pretrained.weights))


def check_same_cell(plan: CellPlan, run: StudyRun) -> None:
    """The cell the worker would train is the one the driver planned and named: same images, weights, recipe
    and library versions, or its numbers would not be what its hash says."""
    rebuilt = cell_key(run.common_key(plan.variant), plan.seed, subset_of(run.split.train, list(plan.chosen)),
                       plan.repeats, plan.skip_scratch)
    differs = [k for k in plan.key if rebuilt.get(k) != plan.key[k]]
    if differs:
        raise UserError(f"the Ray worker on {socket.gethostname()} would train cell {plan.hash} on another "
                        f"'{differs[0]}' than the driver planned; install the same packages, and mount the same "
                        "data, weights and cache, on every Ray node")


def _exit_once(cell_dir: Path, epoch_row: dict) -> None:
    """The EXIT_ONCE_ENV test hook (see there)."""
    flag = os.environ.get(EXIT_ONCE_ENV)
    if flag is None:
        return
    try:
        os.rename(flag, f"{flag}.{cell_dir.name}")  # one cell takes it
    except FileNotFoundError:
        return
    Path(f"{flag}.{cell_dir.name}").touch()
    os._exit(1)
