"""Ablation of the default recipe: each ingredient off in turn, the seeds' recipe beside it, several seeds.

Every cell is one `transferlab compare` (transfer phases only unless --scratch) on real data from three
domains (benchmarks/real_datasets.py). Validation chooses epochs and the kept model inside each run; the
table reports TEST accuracy (mean ± sd over seeds), which no choice here ever saw. Runs share one cache
dir, so the backbone pass is paid once per dataset, size, cut and view.

    python benchmarks/bench_recipes.py                      # all variants, 3 seeds, 3 datasets
    python benchmarks/bench_recipes.py --variants "default;seeds recipe" --seeds 1 --datasets fashion
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_datasets import BUILDERS  # noqa: E402

from transferlab.experiments.compare import run_compare  # noqa: E402
from transferlab.experiments.config import CompareConfig  # noqa: E402
from transferlab.training.recipes import resolve_recipe  # noqa: E402

# each ablation switches one ingredient of the default recipe back to the seeds' choice
VARIANTS = {
    "default": {},
    "no final fit": {"final_fit": False},
    "no augmentation": {"augment": False},
    "no label smoothing": {"label_smoothing": 0.0},
    "constant lr (no warm-up/cosine)": {"schedule": "constant"},
    "seeds' fine-tune lr 1e-5": {"finetune_lr": 1e-5},
    "seeds' cut (last 20 Keras layers)": {"unfreeze": "keras:20"},
    "seeds recipe": {"recipe": "seeds"},
}


def run_cell(dataset: dict, variant: dict, seed: int, root: Path, scratch: bool) -> dict:
    recipe = resolve_recipe(variant.get("recipe", "default"), variant)
    cfg = CompareConfig(**dataset, recipe=recipe, seed=seed, skip_scratch=not scratch,
                        runs_dir=root / "runs", cache_dir=root / "cache", show_progress=False,
                        backbone="tf_efficientnet_lite0")
    started = time.perf_counter()
    results = json.loads((run_compare(cfg) / "results.json").read_text())
    phases = results["phases"]
    kept = phases[results["model_phase"]]
    chosen = (results.get("final_fit") or {}).get("of", results["model_phase"])  # the final fit has no val number
    return {"seed": seed, "test_acc": kept["test_acc"], "val_acc": phases[chosen]["val_acc"],
            "model_phase": results["model_phase"],
            "frozen_test_acc": phases["frozen"]["test_acc"], "finetuned_test_acc": phases["finetuned"]["test_acc"],
            "scratch_test_acc": phases.get("scratch", {}).get("test_acc"),
            "transfer_seconds": results["verdict"]["transfer_seconds"], "wall_seconds": time.perf_counter() - started}


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(BUILDERS))
    parser.add_argument("--variants", default=";".join(VARIANTS), help="names of VARIANTS, separated by ';'")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scratch", action="store_true", help="also train the from-scratch baseline")
    parser.add_argument("--work", type=Path, default=Path("/tmp/transferlab-bench-recipes"))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "recipes.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    names = [v.strip() for v in args.variants.split(";")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    table = {}
    for dataset_name in args.datasets.split(","):
        dataset = BUILDERS[dataset_name](args.work / "data")
        for name in names:
            cells = [run_cell(dataset, VARIANTS[name], seed, args.work, args.scratch) for seed in range(args.seeds)]
            table[f"{dataset_name} | {name}"] = cells
            print(f"{dataset_name:8} | {name:36} | test {mean_sd([c['test_acc'] for c in cells]):>12} | "
                  f"val {mean_sd([c['val_acc'] for c in cells]):>12} | "
                  f"{statistics.mean(c['transfer_seconds'] for c in cells):6.1f} s", flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps({"threads": torch.get_num_threads(), "seeds": args.seeds,
                                               "variants": {n: VARIANTS[n] for n in names}, "cells": table},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
