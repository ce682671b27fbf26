"""The seeds' experiment: from-scratch baseline vs. pretrained-frozen vs. fine-tuned, on one split.

The study of one cell (experiments/phases.py): the transfer phases run first (they produce the model the
user keeps), then the scratch baseline. Each phase writes a checkpoint per epoch, so `resume_compare`
continues an interrupted run exactly.
"""

import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from transferlab.atomic import check_not_in_the_way, lock_folder, write_json_atomic
from transferlab.deploy import export_model
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.datasets import (decode_folders, labels_of, prepare_data, scan_folders, screen_test_set,
                                              subset_of)
from transferlab.errors import UserError, error_text, quoted
from transferlab.formats import RUN_FORMAT_VERSION
from transferlab.experiments.audit import audit_cell
from transferlab.experiments.interrupts import interruptible
from transferlab.experiments.phases import (FINAL_FIT_DIR, CellData, CellPhases, CellSetting, check_input_size, copy_state,
                                            run_cell, run_final_fit, unfreeze_for_finetuning, with_input_sizes)
from transferlab.experiments.scoring import predict_test_set, record_test_accuracy
from transferlab.experiments.run_dir import (CHECKPOINTS_DIR, check_output_folders, default_cache_dir, environment,
                                             new_run_dir, read_run_config)
from transferlab.experiments.tracking import Tracker, tracking
from transferlab.models.backbones import PretrainedBackbone, load_backbone
from transferlab.models.saved import save_model
from transferlab.models.transfer_model import HeadConfig, TransferModel
from transferlab.results import (RESULTS_FILE, Augment, ConfusionMatrix, FinalFit, Leakage, PhaseResult, RunData,
                                 RunResult, SkippedFile, Verdict, Weights)
from transferlab.results_io import from_json, write_results
from transferlab.training.distributed import barrier, join_process_group, run_on_main, torchrun_ranks
from transferlab.training.engines import resolve_engine
from transferlab.training.devices import resolve_device
from transferlab.training.precision import check_precision
from transferlab.training.metrics import confusion_matrix


def run_compare(cfg: CompareConfig, run_dir: Path | None = None) -> Path:
    """Train the three phases and write results.json; returns the run directory. `run_dir` given = resume it.

    Options, data, device and weights are checked before the run directory is made, so a bad input leaves
    nothing behind. config.json stores the resolved config (the backbone actually used, every recipe field,
    absolute paths) and the environment (weights fingerprint, library versions, threads), so a resume
    cannot drift.
    """
    resuming = run_dir is not None
    if not resuming:
        cfg = cfg.with_absolute_paths()  # scanned as stored: a resume sees the very same paths
    ranks = torchrun_ranks()
    cfg = replace(cfg, show_progress=cfg.show_progress and ranks.is_main)
    folders = scan_folders(cfg)
    device = resolve_device(cfg.device, ranks)
    join_process_group(ranks, device)
    resolve_engine(cfg.engine, device)
    check_precision(cfg.precision, device)
    recipe = cfg.recipe
    pretrained: PretrainedBackbone = load_backbone(cfg.backbone, cfg.weights, recipe.image_size_px)
    torch.manual_seed(cfg.seed)
    model = TransferModel(pretrained.module, len(folders.train.class_names), HeadConfig(dropout=recipe.head_dropout))
    check_input_size(model, pretrained)
    unfreeze_for_finetuning(model, recipe)  # a backbone that cannot be cut there fails now, not mid-run
    env = environment(device, pretrained.weights) | {"world_size": ranks.world_size}
    if resuming:
        final_dir = Path(run_dir) / FINAL_FIT_DIR
        check_not_in_the_way(folders=[Path(run_dir) / CHECKPOINTS_DIR, final_dir, final_dir / CHECKPOINTS_DIR])
        stored = read_run_config(run_dir)
        _check_same_weights(stored, env)
        overridden = stored.get("recipe", {}).get("overridden", [])
    else:
        overridden = cfg.overridden_recipe_fields()
        check_output_folders(cfg)
        cfg = replace(with_input_sizes(cfg, model, pretrained), backbone=pretrained.name,
                      cache_dir=(cfg.cache_dir or default_cache_dir()).expanduser().resolve())
        folders = decode_folders(cfg, folders, pretrained.preprocessing, cfg.cache_dir, ranks)
        run_dir = run_on_main(lambda: _new_run(cfg, overridden, env), ranks)
    if pretrained.notice:
        warnings.warn(pretrained.notice, stacklevel=2)
    tracked = (cfg.tensorboard_dir, cfg.mlflow_uri) if ranks.is_main else (None, None)  # only rank 0 logs
    held = []  # rank 0 holds the lock; a refusal stops every rank with the same line, never a hang
    run_on_main(lambda: held.append(lock_folder(run_dir, f"another transferlab is working in {quoted(run_dir)}; wait "
                                                "for it to finish (or stop it, then `transferlab compare --resume` it)")),
                ranks)
    try:
        with interruptible(run_dir) as stop, tracking(run_dir, *tracked, resuming) as tracker:
            setting = CellSetting(cfg, pretrained, device, Path(cfg.cache_dir or default_cache_dir()), stop, ranks)
            results = _train_and_evaluate(setting, folders, model, run_dir, resuming, tracker)
            results = replace(results, recipe={"overridden": overridden, **results.recipe}, environment=env)
            if ranks.is_main:
                _export_for_predict(run_dir)
                write_results(run_dir / "results.json", results)  # last: a run with results.json is finished
            if tracker is not None:
                tracker.log_results(results)
    except UserError:
        if not resuming and ranks.is_main:
            _remove_if_untrained(run_dir)
        raise
    finally:
        for lock in held:
            lock.release()
    barrier(ranks)  # every rank returns a finished run
    return run_dir


def _remove_if_untrained(run_dir: Path) -> None:
    """A new run refused before it trained (the data fails a check only its split can make) leaves no folder
    that `transferlab runs` would list as unfinished and a resume would refuse again."""
    if {p.name for p in run_dir.iterdir()} <= {"config.json", "split.json", ".lock"}:
        shutil.rmtree(run_dir)


def _export_for_predict(run_dir: Path) -> None:
    """The model as ONNX beside it, parity-checked, so that `predict` answers on ONNX Runtime in under a second
    and runs 2.7x faster (README): 1-2 s here. The export is an extra: whatever stops it (a network the
    exporters cannot take, a full disk) costs a warning, never the trained run."""
    try:
        export_model(run_dir)
    except Exception as e:  # noqa: BLE001 - an extra, whatever stops it (exporter, disk, parity): the run is written
        warnings.warn(f"no ONNX export for `predict` ({error_text(e, 200)}); it will use "
                      f"PyTorch; `transferlab export {run_dir}` retries", stacklevel=2)


def _new_run(cfg: CompareConfig, overridden: list[str], env: dict) -> Path:
    run_dir = new_run_dir(cfg.runs_dir, cfg.name or Path(cfg.data_dir or cfg.train_dir).name)
    write_json_atomic(run_dir / "config.json", {
        "format_version": RUN_FORMAT_VERSION, "config": cfg.to_dict(),
        "recipe": {"overridden": overridden, **cfg.recipe.to_dict()},
        "environment": env})
    return run_dir


def _check_same_weights(stored: dict, env: dict) -> None:
    before = stored.get("environment", {}).get("weights", {})
    if before.get("fingerprint") not in (None, env["weights"]["fingerprint"]):
        raise UserError(f"the weights of this run ({before.get('location')}) changed since it started; "
                        "restore them or start a new run instead of resuming")


def _train_and_evaluate(setting: CellSetting, folders, model: TransferModel, run_dir: Path, resuming: bool,
                        tracker: Tracker | None) -> RunResult:
    started = time.perf_counter()
    cfg, recipe, pretrained, device = setting.cfg, setting.recipe, setting.pretrained, setting.device
    ranks = setting.ranks
    prep = pretrained.preprocessing
    decode_started = time.perf_counter()
    prepared = prepare_data(cfg, folders, prep, run_dir, ranks)
    split = prepared.split
    decode_seconds = time.perf_counter() - decode_started
    n_classes = len(split.class_names)
    data = CellData(split.train, split.val, n_classes)
    cell = CellPhases(setting, data, run_dir, resuming, tracker.log_epoch if tracker else None)
    initial_state = copy_state(model) if recipe.final_fit else None  # pretrained backbone, untrained head
    audit = (audit_cell(setting.pretrained, data.train, data.val, split.class_names, setting.cache_dir, device,
                        cfg.engine, cfg.seed) if cfg.audit and ranks.is_main else None)  # before fine-tuning changes the backbone
    models = run_cell(cell, model, skip_scratch=cfg.skip_scratch)
    model, kept, views = models.model, models.kept, recipe.cached_views if recipe.augment else 1
    head_cfg = HeadConfig(dropout=recipe.head_dropout)
    phases = cell.phases

    # every choice is made on validation: the transfer pipeline to keep; then, with the final fit, that
    # pipeline again on train + validation; then the test set is read, once
    chosen = max(kept, key=lambda p: kept[p][0])
    final, train_and_val = None, None
    if recipe.final_fit:
        train_and_val = subset_of(prepared.decoded, split.train.images + split.val.images)
        final, final_phases = run_final_fit(cell, train_and_val, chosen, model, initial_state)
        phases["final"] = final_fit_summary(final_phases, chosen, len(data.train.images) + len(data.val.images))
    test_predictions, test = {}, None
    if split.test is not None:
        test = screen_test_set(prepared, cfg, trained_on=train_and_val)
        if not test.images:
            raise UserError("the test set is empty (too few images per class, or every test image duplicates a "
                            "training one); give a larger --test-fraction or a --test folder")
        test_predictions = predict_test_set(setting, test, models)
        if final is not None:
            test_predictions["final"] = predict_test_set(setting, test, final)[chosen]
        record_test_accuracy(phases, test_predictions, labels_of(test), n_classes)
    model_phase = "final" if final is not None else chosen
    model.load_state_dict((final or models).kept[chosen][1])
    if ranks.is_main:
        save_model(run_dir, model, backbone=pretrained.name, class_names=list(split.class_names),
                   preprocessing=prep, head=head_cfg, phase=model_phase, val_acc=kept[chosen][0])
    best_phase = max((p for p in phases if phases[p].val_acc is not None), key=lambda p: phases[p].val_acc)
    transfer_seconds = decode_seconds + sum(phases[p].seconds for p in ("frozen", "finetuned", "final")
                                            if p in phases)
    on_test = test is not None
    verdict_phase = model_phase if on_test else chosen  # the final fit trained on validation: no number there
    subset = "test" if on_test else "validation"
    headline = phases[verdict_phase].accuracy_on(subset)
    counts = lambda d: np.bincount(labels_of(d), minlength=n_classes).tolist()  # noqa: E731
    matrix_labels, matrix_predictions = ((labels_of(test), test_predictions[best_phase]) if on_test
                                         else (cell.val_labels, cell.predictions[best_phase]))
    return RunResult(
        run_dir=str(run_dir), backbone=pretrained.name,
        weights=Weights(kind=pretrained.weights.kind, location=pretrained.weights.location),
        notice=pretrained.notice, device=str(device), preprocessing=prep.to_dict(),
        recipe=recipe.to_dict(),  # run_compare adds which fields were overridden
        augment=Augment(enabled=recipe.augment, cached_views=views,
                        mode=(f"{views} augmented views cached per image" if recipe.augment
                              else "no augmentation; exact feature cache")),
        data=RunData(source=str(cfg.data_dir or cfg.train_dir), val_source=str(cfg.val_dir or ""),
                     test_source=str(cfg.test_dir or ("split.json" if cfg.test_fraction else "")),
                     split="split.json" if cfg.data_dir else "explicit --train/--val",
                     class_names=list(split.class_names), train_per_class=counts(split.train),
                     val_per_class=counts(split.val), n_train=len(split.train.images),
                     n_val=len(split.val.images), n_test=len(test.images) if on_test else 0,
                     skipped=[SkippedFile(path=str(s.path), reason=s.reason) for s in prepared.skipped],
                     ignored_files=[str(p) for p in split.ignored_files],
                     leakage=from_json(Leakage, prepared.leakage),  # datasets.py reports it as a dict
                     imbalanced=max(counts(split.train)) > 1.5 * max(min(counts(split.train)), 1),
                     excluded=[str(im.path) for im in prepared.subsets["excluded"]]),
        decode_seconds=decode_seconds,
        phases=phases,
        model_phase=model_phase,
        final_fit=None if final is None else FinalFit(of=chosen, n_train=phases["final"].n_train),
        best_phase=best_phase,
        confusion_matrix=ConfusionMatrix(phase=best_phase, subset=subset,
                                         matrix=confusion_matrix(matrix_labels, matrix_predictions, n_classes)),
        verdict=Verdict(subset=subset, phase=verdict_phase, target_acc=cfg.target_acc, acc=headline,
                        target_met=headline >= cfg.target_acc,
                        val_optimism=None if on_test else phases[chosen].val_acc_over_last_epoch,
                        time_budget_seconds=cfg.time_budget_seconds, transfer_seconds=transfer_seconds,
                        time_target_met=transfer_seconds <= cfg.time_budget_seconds),
        engine=resolve_engine(cfg.engine, device),
        training_precision={name: phase.precision for name, phase in phases.items()},
        total_seconds=time.perf_counter() - started,
        environment={},  # run_compare's, which a resume checked against the stored one
        audit=audit,
    )


def final_fit_summary(final_phases: dict[str, PhaseResult], chosen: str, n_train: int) -> PhaseResult:
    """The final fit as one row: the chosen phase's numbers, its seconds summed over the phases it re-ran,
    and nothing measured on validation (it trained on those images)."""
    ran = [p for name, p in final_phases.items() if name in ("frozen", chosen)]
    return replace(final_phases[chosen], val_acc=None, balanced_val_acc=None, gap=None, val_acc_over_last_epoch=None,
                   seconds=sum(p.seconds for p in ran), cache_seconds=sum(p.cache_seconds for p in ran),
                   train_seconds=sum(p.train_seconds for p in ran), fit_of=chosen, n_train=n_train)


def resume_compare(run_dir: Path, show_progress: bool = True) -> Path:
    run_dir = Path(run_dir)
    if (run_dir / RESULTS_FILE).is_file():  # resuming it would train its last epochs again and overwrite it all
        raise UserError(f"run {quoted(run_dir)} is finished (it has {RESULTS_FILE}): nothing to resume; read "
                        f"{quoted(run_dir / 'report.md')} (`transferlab report` rebuilds it), or start a new run")
    cfg = CompareConfig.from_file(run_dir / "config.json")
    for what, folder in cfg.data_folders():
        if not folder.exists():  # moved or renamed since: the layout hint would mislead
            raise UserError(f"run {quoted(run_dir)} trained on {quoted(folder)} ({what}), which no longer exists; "
                            "put the data back there to resume, or start a new run")
    return run_compare(replace(cfg, show_progress=show_progress), run_dir=run_dir)
