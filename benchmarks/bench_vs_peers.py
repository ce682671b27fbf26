"""transferlab against the tools a user would pick instead, on the same images, split, weights and input size.

Contenders, each in its own fresh process (cold start: interpreter, imports, weights, an empty cache), 2 CPU
threads, EfficientNet-Lite0 with the offline ImageNet weights (timm's `tf_efficientnet_lite0`) at 224 px:

  transferlab default  `run_compare`, recipe default, no scratch phase (the peers train none)
  transferlab fast     the same, recipe fast (default in about half the time)
  transferlab seeds    the same, recipe seeds (the seed documents' recipe)
  fastai               fastbook chapter 2's recipe for ~450 images: `vision_learner` (fastai's head),
                       RandomResizedCrop(224, min_scale=0.5) + `aug_transforms()`, batch 64, `lr_find()`'s
                       valley as base_lr, then `fine_tune(4)` (1 frozen epoch, 4 unfrozen, discriminative rates)
  timm loop            train.py's inner loop for a fine-tune: the whole network trains, AdamW (lr 5e-4,
                       weight decay 0.05), 1 warm-up epoch then cosine per step (5 epochs in all), label
                       smoothing 0.1, timm's training transform (RandomResizedCrop, flip, colour jitter 0.4),
                       batch 32; the best-validation epoch is kept, as train.py's checkpoint saver does

The weights go into fastai's and timm's models the way an offline user would do it: `timm.create_model(...,
pretrained_cfg_overlay=dict(file=...))`. Peers run as their users run them (fp32, eager, their own data
loaders with 2 workers); transferlab runs as `transferlab compare --skip-scratch` does. Test images are read
once, by the model each contender keeps. For a folder-per-class dataset the split is the one transferlab's
recipe drew for that seed (its split.json), so every contender sees the same train/val/test files.

Reported per dataset and contender: test accuracy, mean with its 95 % t-interval over seeds, and the
difference to the first contender (a transferlab recipe: it draws each seed's split) paired by seed; wall
time from process start to exit; peak RSS of the contender's own process (ru_maxrss; data-loader workers
apart).

    python benchmarks/bench_vs_peers.py --quick                      # smoke test, ~5 min on 2 CPU cores
    python benchmarks/bench_vs_peers.py                              # embedded set, 3 seeds
    python benchmarks/bench_vs_peers.py --datasets fashion,icons,digits
    python benchmarks/bench_vs_peers.py --contenders transferlab-fast,timm-loop --datasets fashion,icons,digits \
        --output benchmarks/results/vs_peers_fast.json
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_datasets import BUILDERS  # noqa: E402

from transferlab.atomic import write_json_atomic  # noqa: E402
from transferlab.reporting.statistics import mean_interval, paired_test  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BACKBONE = "tf_efficientnet_lite0"
IMAGE_SIZE_PX = 224
THREADS = 2
WORKERS = 2
FASTAI_EPOCHS = 4            # fastbook ch. 2 (bear classifier, ~450 images): learn.fine_tune(4)
FASTAI_BATCH = 64            # fastai's default bs
TIMM_EPOCHS = 5              # fastai's 1 + 4, so both peers train the whole network for the same epochs
TIMM_WARMUP_EPOCHS = 1
TIMM_LR = 5e-4
TIMM_WEIGHT_DECAY = 0.05
TIMM_SMOOTHING = 0.1
TIMM_BATCH = 32
CONTENDERS = ("transferlab-default", "transferlab-fast", "transferlab-seeds", "fastai", "timm-loop")
QUICK = {"fastai_epochs": 1, "timm_epochs": 1, "lr_find_iterations": 10, "image_size": 64}


# --- the split every contender reads -------------------------------------------------------------------------

def split_lists(dataset: dict, run_dir: Path) -> dict[str, list[str]]:
    """train/val/test file lists: the explicit folders, or the split transferlab drew for this seed."""
    if "train_dir" in dataset:
        return {part: sorted(str(p) for p in Path(dataset[f"{part}_dir"]).glob("*/*") if p.is_file())
                for part in ("train", "val", "test")}
    split = json.loads((run_dir / "split.json").read_text())
    root = Path(split["root"])
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for rel, part in split["files"].items():
        if part in lists:
            lists[part].append(str(root / rel))
    return lists


def label_of(path: str) -> str:
    return Path(path).parent.name


# --- contenders (each runs in its own process) ---------------------------------------------------------------

def run_transferlab(cell: dict) -> dict:
    from transferlab.experiments.compare import run_compare
    from transferlab.experiments.config import CompareConfig
    from transferlab.training.recipes import resolve_recipe

    overrides = {"image_size_px": cell["image_size"]} | ({"frozen_epochs": 1, "finetune_epochs": 1} if cell["quick"]
                                                         else {})
    cfg = CompareConfig(**cell["dataset"], recipe=resolve_recipe(cell["recipe"], overrides), seed=cell["seed"],
                        skip_scratch=True, backbone=BACKBONE, runs_dir=Path(cell["work"]) / "runs",
                        cache_dir=Path(cell["work"]) / "cache", show_progress=False, audit=False)
    run_dir = run_compare(cfg)
    results = json.loads((run_dir / "results.json").read_text())
    phases = results["phases"]
    return {"test_acc": phases[results["model_phase"]]["test_acc"], "kept": results["model_phase"],
            "final_fit_of": (results.get("final_fit") or {}).get("of"),  # the pipeline validation kept
            "finetuned_test_acc": phases["finetuned"]["test_acc"], "run_dir": str(run_dir)}


def offline_weights(path: Path) -> Path:
    """The offline ImageNet weights as a timm state dict file, for `pretrained_cfg_overlay=dict(file=...)`."""
    if not path.exists():
        from safetensors.torch import save_file

        from transferlab.models.backbones import load_backbone
        state = load_backbone(BACKBONE, None, None).module.state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def check_loaded(model: torch.nn.Module, weights: Path) -> None:
    """timm loads an overlay file non-strictly once the classifier differs: every backbone tensor must match."""
    from safetensors.torch import load_file
    expected = load_file(str(weights))
    state = model.state_dict()
    prefix = next(p for p in ("", "model.", "0.model.") if p + "conv_stem.weight" in state)
    missing = [k for k, v in expected.items() if not torch.equal(state[prefix + k], v)]
    if missing:
        raise SystemExit(f"weights not loaded into the peer's model: {missing[:3]}")


def run_fastai(cell: dict) -> dict:
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, IndexSplitter, RandomResizedCrop,
                                   accuracy, aug_transforms, parent_label, set_seed, vision_learner)
    set_seed(cell["seed"], reproducible=True)
    lists, weights = cell["lists"], cell["weights"]
    items = lists["train"] + lists["val"]
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=lambda _: items, get_y=parent_label,
                      splitter=IndexSplitter(range(len(lists["train"]), len(items))),
                      item_tfms=RandomResizedCrop(cell["image_size"], min_scale=0.5), batch_tfms=aug_transforms())
    # path: where lr_find writes its temporary model (models/_tmp.pth); fastai's default is the current folder
    dls = block.dataloaders(cell["work"], path=cell["work"], bs=FASTAI_BATCH, num_workers=WORKERS)
    learn = vision_learner(dls, BACKBONE, metrics=accuracy, pretrained=True,
                           pretrained_cfg_overlay={"file": weights})
    check_loaded(learn.model, Path(weights))
    with learn.no_bar(), learn.no_logging():
        suggestion = learn.lr_find(num_it=cell["lr_find_iterations"], show_plot=False)
        learn.fine_tune(cell["fastai_epochs"], base_lr=suggestion.valley)
        val_acc = float(learn.validate()[1])
        test_dl = dls.test_dl(lists["test"], with_labels=True)
        preds, targets = learn.get_preds(dl=test_dl)
    return {"test_acc": float((preds.argmax(1) == targets).float().mean()), "val_acc": val_acc,
            "base_lr": float(suggestion.valley), "epochs": f"1 frozen + {cell['fastai_epochs']} unfrozen"}


def run_timm_loop(cell: dict) -> dict:
    """train.py's fine-tune, written out: create_model, create_transform, create_optimizer_v2,
    create_scheduler_v2 (step_update per step), LabelSmoothingCrossEntropy, keep the best-validation epoch."""
    import copy

    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from torch.utils.data import DataLoader

    torch.manual_seed(cell["seed"])
    lists = cell["lists"]
    classes = sorted({label_of(p) for p in lists["train"]})
    model = timm.create_model(BACKBONE, pretrained=True, num_classes=len(classes),
                              pretrained_cfg_overlay={"file": cell["weights"]})
    check_loaded(model, Path(cell["weights"]))
    config = resolve_data_config(model=model) | {"input_size": (3, cell["image_size"], cell["image_size"])}
    train_tf, eval_tf = create_transform(**config, is_training=True), create_transform(**config)

    def loader(part: str, transform, shuffle: bool) -> DataLoader:
        samples = [(p, classes.index(label_of(p))) for p in lists[part]]
        dataset = [(p, y) for p, y in samples]
        return DataLoader(dataset, batch_size=TIMM_BATCH, shuffle=shuffle, num_workers=WORKERS, drop_last=shuffle,
                          collate_fn=lambda batch: (torch.stack([transform(Image.open(p).convert("RGB"))
                                                                 for p, _ in batch]),
                                                    torch.tensor([y for _, y in batch])))

    def top1(part: str) -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in loader(part, eval_tf, False):
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        return correct / total

    train = loader("train", train_tf, True)
    optimizer = create_optimizer_v2(model, "adamw", lr=TIMM_LR, weight_decay=TIMM_WEIGHT_DECAY)
    scheduler, epochs = create_scheduler_v2(optimizer, "cosine", num_epochs=cell["timm_epochs"],
                                            warmup_epochs=min(TIMM_WARMUP_EPOCHS, cell["timm_epochs"] - 1),
                                            warmup_lr=1e-6, min_lr=1e-6, step_on_epochs=False,
                                            updates_per_epoch=len(train))
    loss_fn = LabelSmoothingCrossEntropy(TIMM_SMOOTHING)
    best_acc, best_state, updates = -1.0, None, 0
    for epoch in range(epochs):
        model.train()
        for x, y in train:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
        scheduler.step(epoch + 1)
        val_acc = top1("val")
        if val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {"test_acc": top1("test"), "val_acc": best_acc, "epochs": epochs}


RUNNERS = {"transferlab-default": run_transferlab, "transferlab-fast": run_transferlab,
           "transferlab-seeds": run_transferlab, "fastai": run_fastai, "timm-loop": run_timm_loop}


def child(cell_file: Path) -> None:
    cell = json.loads(cell_file.read_text())
    torch.set_num_threads(THREADS)
    result = RUNNERS[cell["contender"]](cell)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json_atomic(cell_file.with_suffix(".result.json"), result)


# --- the driver ----------------------------------------------------------------------------------------------

def run_cell(cell: dict, work: Path) -> dict:
    """One contender in a fresh process; wall time from its start to its exit."""
    cell_file = work / f"{cell['dataset_name']}-{cell['contender']}-seed{cell['seed']}.json"
    cell_file.write_text(json.dumps(cell, default=str))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--cell", str(cell_file)], check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}", "wall_seconds": wall}
    return json.loads(cell_file.with_suffix(".result.json").read_text()) | {"wall_seconds": wall}


def summary(cells: dict[str, list[dict]], base_name: str) -> dict[str, dict]:
    """Per contender: test accuracy and wall time with 95 % intervals; the test difference to `base_name` paired
    by seed; the wall-time ratio (contender / base)."""
    base = cells[base_name]
    out = {}
    for name, runs in cells.items():
        ok = [r for r in runs if "test_acc" in r]
        if not ok:
            out[name] = {"errors": [r.get("error") for r in runs]}
            continue
        acc, wall = mean_interval([r["test_acc"] for r in ok]), mean_interval([r["wall_seconds"] for r in ok])
        row = {"n": acc.n, "test_acc": acc.mean, "test_acc_half_width": acc.half_width, "wall_seconds": wall.mean,
               "wall_half_width": wall.half_width, "peak_rss_mib": max(r["peak_rss_mib"] for r in ok)}
        pairs = [(r["test_acc"], b["test_acc"]) for r, b in zip(runs, base) if "test_acc" in r and "test_acc" in b]
        if name != base_name and pairs:
            test = paired_test([a for a, _ in pairs], [b for _, b in pairs])
            row |= {"minus_transferlab": test.difference.mean, "minus_transferlab_half_width":
                    test.difference.half_width, "p_value": test.p_value,
                    "wall_ratio": wall.mean / mean_interval([b["wall_seconds"] for b in base]).mean}
        out[name] = row
    return out


def table(report: dict) -> str:
    def pm(mean: float, half: float | None, scale: float = 100, fmt: str = ".1f") -> str:
        return f"{scale * mean:{fmt}}" + ("" if half is None else f" ± {scale * half:{fmt}}")

    base = report["base"]
    lines = [f"| dataset | contender | test acc % | vs {base} (pts) | wall s | wall ÷ {base} | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for dataset, rows in report["summary"].items():
        for name, r in rows.items():
            if "errors" in r:
                lines.append(f"| {dataset} | {name} | failed: {r['errors']} | | | | |")
                continue
            diff = ("" if "minus_transferlab" not in r else
                    pm(r["minus_transferlab"], r["minus_transferlab_half_width"], fmt="+.1f")
                    + ("" if r["p_value"] is None else f" (p {r['p_value']:.2f})"))
            ratio = f"{r['wall_ratio']:.2f}" if "wall_ratio" in r else ""
            lines.append(f"| {dataset} | {name} | {pm(r['test_acc'], r['test_acc_half_width'])} | {diff} | "
                         f"{pm(r['wall_seconds'], r['wall_half_width'], 1, '.0f')} | {ratio} | "
                         f"{r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    import importlib.util
    contenders = [c.strip() for c in args.contenders.split(",")]
    unknown = [c for c in contenders if c not in CONTENDERS]
    unknown += [d for d in args.datasets.split(",") if d not in BUILDERS]
    if unknown or not contenders[0].startswith("transferlab-"):
        raise SystemExit(f"unknown {unknown} (contenders: {CONTENDERS}, a transferlab recipe first: it draws the "
                         f"split; datasets: {list(BUILDERS)})")
    base = contenders[0]
    missing = [m for m in ("fastai",) if m in contenders and importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"{missing} not installed: pip install '.[bench]'")
    settings = QUICK if args.quick else {"fastai_epochs": FASTAI_EPOCHS, "timm_epochs": TIMM_EPOCHS,
                                         "lr_find_iterations": 100, "image_size": IMAGE_SIZE_PX}
    work = Path(tempfile.mkdtemp(prefix="transferlab-peers-", dir=args.work))
    weights = str(offline_weights(work / "lite0.safetensors"))
    report = {"threads": THREADS, "seeds": args.seeds, "settings": settings, "torch": torch.__version__,
              "base": base, "cells": {}, "summary": {}}
    output = args.output or RESULTS_DIR / f"vs_peers{'_quick' if args.quick else ''}.json"
    for dataset_name in args.datasets.split(","):
        dataset = {k: str(v) if isinstance(v, Path) else v for k, v in BUILDERS[dataset_name](work / "data").items()}
        cells: dict[str, list[dict]] = {c: [] for c in contenders}
        for seed in range(args.seeds):  # seeds outermost: a stopped run still has whole pairs
            lists = None
            for contender in contenders:
                cell_work = work / dataset_name / f"seed{seed}" / contender
                cell_work.mkdir(parents=True)
                cell = {"contender": contender, "dataset_name": dataset_name, "dataset": dataset, "seed": seed,
                        "work": str(cell_work), "weights": weights, "quick": args.quick,
                        "recipe": contender.removeprefix("transferlab-"), "lists": lists} | settings
                print(f"{dataset_name} seed {seed}: {contender} ...", flush=True)
                result = run_cell(cell, work)
                cells[contender].append(result)
                print(f"  test {result.get('test_acc', float('nan')):.3f}  {result['wall_seconds']:.0f} s", flush=True)
                if contender == base and "run_dir" in result:
                    lists = split_lists(dataset, Path(result["run_dir"]))
            report["cells"][dataset_name] = cells
            report["summary"][dataset_name] = summary(cells, base)
            write_json_atomic(output, report)
    print(table(report))
    print(f"JSON: {output}")
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="fashion", help=f"comma-separated, of {list(BUILDERS)} (default %(default)s)")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="64 px, 1 epoch each: checks the bench runs, measures nothing")
    p.add_argument("--work", type=Path, default=None, help="parent of the scratch folder (default: the system's tmp)")
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--cell", type=Path, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()
    if parsed.cell:
        child(parsed.cell)
    else:
        main(parsed)
