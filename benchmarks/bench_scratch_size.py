"""The scratch baseline's input size: its validation accuracy and seconds at 224 px vs smaller sizes.

Issue 17 asks scratch for its best honest shot, cheaply: a smaller input may become the default for small
sources only where scratch's validation accuracy there is at least as high, and what it saves goes to epochs.
Each cell trains only the scratch phase of one `compare` split (experiments/phases.py `train_scratch`, the
default recipe's plateau rule, no wall-clock budget, so the numbers do not depend on the machine's load) in
bf16 (the precision the demo's probe picks on this CPU; fixed, so no probe can change the arithmetic under
load). Validation is the only set read: this chooses a default.

    python benchmarks/bench_scratch_size.py                                  # 3 datasets, 3 seeds
    python benchmarks/bench_scratch_size.py --datasets fashion --sizes 224:20,64:60 --seeds 1   # adds to the JSON
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recipes import mean_sd  # noqa: E402
from real_datasets import BUILDERS  # noqa: E402

from transferlab.experiments.config import CompareConfig  # noqa: E402
from transferlab.experiments.datasets import decode_folders, prepare_data, scan_folders  # noqa: E402
from transferlab.experiments.interrupts import StopRequests  # noqa: E402
from transferlab.experiments.phases import CellData, CellPhases, CellSetting, train_scratch  # noqa: E402
from transferlab.models.backbones import load_backbone  # noqa: E402
from transferlab.training.recipes import resolve_recipe  # noqa: E402

BACKBONE = "tf_efficientnet_lite0"


def scratch_cell(dataset: dict, size: int, cap: int, seed: int, root: Path) -> dict:
    recipe = resolve_recipe("default", {"scratch_image_size_px": size, "scratch_epochs": cap, "final_fit": False})
    recipe = replace(recipe, scratch_stopping=replace(recipe.scratch_stopping, budget_seconds=None))
    cfg = CompareConfig(**dataset, recipe=recipe, seed=seed, runs_dir=root / "runs", cache_dir=root / "cache",
                        show_progress=False, backbone=BACKBONE, precision="bf16").with_absolute_paths()
    started = time.perf_counter()
    pretrained = load_backbone(cfg.backbone, None, None)
    cfg = cfg.with_image_size(pretrained.preprocessing.image_size_px)
    folders = decode_folders(cfg, scan_folders(cfg), pretrained.preprocessing, cfg.cache_dir)
    run_dir = root / "runs" / f"{Path(str(dataset.get('data_dir') or dataset['train_dir'])).name}-{size}-{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    split = prepare_data(cfg, folders, pretrained.preprocessing, run_dir).split
    cell = CellPhases(CellSetting(cfg, pretrained, torch.device("cpu"), cfg.cache_dir, StopRequests()),
                      CellData(split.train, split.val, len(split.class_names)), run_dir, resuming=False)
    train_scratch(cell)
    p = cell.phases["scratch"]
    return {"seed": seed, "size_px": size, "epoch_cap": cap, "val_acc": p.val_acc, "train_acc": p.train_acc,
            "best_epoch": p.best_epoch, "epochs": len(p.epochs), "ended_by": p.stopped,
            "recent_val_gain": p.recent_val_gain, "train_seconds": p.train_seconds,
            "seconds_per_epoch": p.train_seconds / max(1, len(p.epochs)),
            "val_curve": [r["val_acc"] for r in p.epochs], "wall_seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(BUILDERS))
    parser.add_argument("--sizes", default="224:20,128:40,96:60,64:60",
                        help="size:epoch-cap pairs; the default recipe's cap is 20 (at 224 px)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/transferlab-bench-scratch-size"))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "scratch_size.json")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in pair.split(":")) for pair in args.sizes.split(",")]
    # cells already in --output are kept (a second invocation adds sizes, datasets or seeds)
    table: dict[str, list[dict]] = json.loads(args.output.read_text())["cells"] if args.output.exists() else {}
    print("dataset  | size px | cap | val acc      | epochs run | ended by            | s/epoch | seconds", flush=True)
    for dataset_name in args.datasets.split(","):
        dataset = BUILDERS[dataset_name](args.work / "data")
        for size, cap in sizes:
            cells = [scratch_cell(dataset, size, cap, seed, args.work) for seed in range(args.seeds)]
            table[f"{dataset_name} | {size} px, cap {cap}, {args.seeds} seeds"] = cells
            print(f"{dataset_name:8} | {size:7} | {cap:3} | {mean_sd([c['val_acc'] for c in cells]):>12} | "
                  f"{', '.join(str(c['epochs']) for c in cells):>10} | "
                  f"{', '.join(c['ended_by'] for c in cells):>19} | "
                  f"{statistics.mean(c['seconds_per_epoch'] for c in cells):7.1f} | "
                  f"{statistics.mean(c['train_seconds'] for c in cells):7.0f}", flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps({"threads": torch.get_num_threads(),
                                               "backbone": BACKBONE, "precision": "bf16", "cells": table},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
