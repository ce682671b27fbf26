"""The frozen pass (the prefix that fills the caches) on each engine, side by side, on the embedded images.

  pytorch            eager, contiguous NCHW
  pytorch_cl         eager, channels_last (compare's memory format for the transfer model)
  onnxruntime        transferlab.training.engines: the exported prefix, intra-op threads = torch's

Engines take turns within each round, so load from other processes hits all of them alike. Every engine
gets the decode cache's uint8 NHWC pixels and normalises them (ONNX Runtime inside its graph), as the
frozen pass does; img/s is images / seconds spent inside the engine, median over rounds. The ONNX
export is timed on its own: it is paid once per backbone, weights, size and cuts.

--train-steps N adds full training steps (forward + backward + Adam, every layer trainable, batch 32) of
EfficientNet-Lite0 under bf16 autocast vs fp32, alternating, from the same weights on the same batches.

    .venv/bin/python benchmarks/bench_frozen_pass.py --quick                  # smoke test, ~1 min on CPU
    .venv/bin/python benchmarks/bench_frozen_pass.py --train-steps 8          # the published numbers
"""

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferlab.atomic import write_json_atomic
from transferlab.data.decoded import decode_images
from transferlab.data.embedded import export_embedded
from transferlab.data.images import Preprocessing
from transferlab.data.scan import scan_image_folder
from transferlab.models.backbones import OFFLINE_BACKBONE, load_backbone
from transferlab.models.transfer_model import TransferModel
from transferlab.training.engines import prefix_runner, torch_prefixes
from transferlab.training.inputs import ImageInputs, normalise
from transferlab.training.precision import BF16_CPU_FLAGS, cpu_info

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BACKBONES = {OFFLINE_BACKBONE: True, "mobilenetv2_100": False}  # name: pretrained (MobileNetV2: no offline weights)
ENGINES = ("pytorch", "pytorch_cl", "onnxruntime")
FULL = {"image_size": 224, "images": 500, "rounds": 3, "train_batch_size": 32}
QUICK = {"image_size": 96, "images": 64, "rounds": 1, "train_batch_size": 8}
BATCH_SIZE = 64          # prefix_outputs' batch size
TRAIN_LR = 1e-5          # CompareConfig.finetune_lr: the fine-tuning phase trains the backbone


def load_images(work: Path, n_images: int, prep: Preprocessing) -> tuple[ImageInputs, np.ndarray]:
    """The first n embedded training images, decoded as compare does; (normalised batches, labels)."""
    train_dir, _, _ = export_embedded(work / "embedded")
    images = sorted(scan_image_folder(train_dir).images, key=lambda im: im.path.name)[:n_images]
    decoded = decode_images(images, prep, work / "decoded", show_progress=False)
    labels = np.array([im.label for im in decoded.images], dtype=np.int64)
    return ImageInputs(decoded.pixels, prep, torch.device("cpu")), labels


def engine_runners(name: str, pretrained: bool, image_size_px: int, work: Path) -> tuple[dict, Preprocessing, float]:
    """The three engines on one model, its preprocessing, and the seconds the ONNX export took."""
    backbone = load_backbone(name, None, image_size_px, pretrained=pretrained)
    model = TransferModel(backbone.module, n_classes=5).eval()
    cuts = [len(model.units)]  # the frozen phase's pass: pooled features
    cpu = torch.device("cpu")
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    started = time.perf_counter()
    onnx = prefix_runner(model, cuts, backbone.preprocessing, cpu, "onnxruntime", work / "cache", backbone.cache_key)
    export_seconds = time.perf_counter() - started
    prep = backbone.preprocessing

    def contiguous(pixels: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return model.prefixes(normalise(pixels, prep).contiguous(), cuts)
    runners = {"pytorch": contiguous, "pytorch_cl": torch_prefixes(channels_last, cuts, prep, cpu), "onnxruntime": onnx}
    return runners, backbone.preprocessing, export_seconds


def measure_frozen_pass(name: str, pretrained: bool, settings: dict, work: Path) -> dict:
    runners, prep, export_seconds = engine_runners(name, pretrained, settings["image_size"], work)
    inputs, _ = load_images(work, settings["images"], prep)
    batches = [np.arange(s, min(s + BATCH_SIZE, len(inputs))) for s in range(0, len(inputs), BATCH_SIZE)]
    for run in runners.values():  # warm-up: first-call allocations, and the ONNX parity check
        run(torch.from_numpy(inputs.pixels[batches[0][:8]]))
    seconds: dict[str, list[float]] = {e: [] for e in ENGINES}
    for round_ in range(settings["rounds"]):
        for engine in ENGINES[round_ % len(ENGINES):] + ENGINES[:round_ % len(ENGINES)]:  # rotate who goes first
            spent = 0.0
            for positions in batches:
                x = torch.from_numpy(inputs.pixels[positions])
                started = time.perf_counter()
                runners[engine](x)
                spent += time.perf_counter() - started
            seconds[engine].append(spent)
    onnx = runners["onnxruntime"]
    return {"backbone": name, "weights": "pretrained" if pretrained else "random", "images": len(inputs),
            "export_seconds": export_seconds, "onnx_engine_used": onnx.engine,
            "onnx_max_abs_delta": onnx.max_abs_delta,
            "engines": {e: {"img_per_s": len(inputs) / statistics.median(s), "seconds_per_round": s}
                        for e, s in seconds.items()}}


def measure_train_steps(steps: int, settings: dict, work: Path) -> dict:
    """bf16 autocast vs fp32: same start, same batches, same dropout masks; step times and losses."""
    backbone = load_backbone(OFFLINE_BACKBONE, None, settings["image_size"])
    torch.manual_seed(0)
    base = TransferModel(backbone.module, n_classes=5).to(memory_format=torch.channels_last).train()
    inputs, labels = load_images(work, settings["images"], backbone.preprocessing)
    models = {"fp32": base, "bf16": copy.deepcopy(base)}
    optimizers = {k: torch.optim.Adam(m.parameters(), lr=TRAIN_LR) for k, m in models.items()}
    seconds: dict[str, list[float]] = {k: [] for k in models}
    losses: dict[str, list[float]] = {k: [] for k in models}
    batch = settings["train_batch_size"]
    for step in range(steps):
        positions = np.arange(step * batch, (step + 1) * batch) % len(inputs)
        x, target = inputs.batch(positions, 0), torch.from_numpy(labels[positions])
        for kind in (("fp32", "bf16") if step % 2 == 0 else ("bf16", "fp32")):
            torch.manual_seed(step)
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "bf16"):
                logits = models[kind](x).float()
            loss = nn.functional.cross_entropy(logits, target)
            optimizers[kind].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[kind].step()
            seconds[kind].append(time.perf_counter() - started)
            losses[kind].append(loss.item())
    img_per_s = {k: batch / statistics.median(s[1:] or s) for k, s in seconds.items()}  # step 0 warms up
    gaps = [abs(a - b) for a, b in zip(losses["bf16"], losses["fp32"])]
    return {"backbone": OFFLINE_BACKBONE, "steps": steps, "batch_size": batch, "lr": TRAIN_LR,
            "img_per_s": img_per_s, "speedup_bf16": img_per_s["bf16"] / img_per_s["fp32"],
            "losses": losses, "max_abs_loss_gap": max(gaps), "max_rel_loss_gap": max(
                g / abs(f) for g, f in zip(gaps, losses["fp32"])), "seconds_per_step": seconds}


def markdown_tables(report: dict) -> str:
    lines = ["| backbone | weights | " + " | ".join(f"{e} img/s" for e in ENGINES)
             + " | onnxruntime / pytorch_cl | export s | onnx max abs delta |", "|---" * (len(ENGINES) + 5) + "|"]
    for r in report["frozen_pass"]:
        rate = {e: r["engines"][e]["img_per_s"] for e in ENGINES}
        delta = "n/a" if r["onnx_max_abs_delta"] is None else f"{r['onnx_max_abs_delta']:.1e}"
        lines.append(f"| {r['backbone']} | {r['weights']} | " + " | ".join(f"{rate[e]:.1f}" for e in ENGINES)
                     + f" | {rate['onnxruntime'] / rate['pytorch_cl']:.2f}x | {r['export_seconds']:.1f} | {delta} |")
    train = report.get("train_steps")
    if train:
        lines += ["", "| training step | fp32 img/s | bf16 img/s | bf16 / fp32 | max loss gap (abs / rel) |",
                  "|---|---|---|---|---|",
                  f"| {train['backbone']} batch {train['batch_size']}, {train['steps']} steps | "
                  f"{train['img_per_s']['fp32']:.1f} | {train['img_per_s']['bf16']:.1f} | "
                  f"{train['speedup_bf16']:.2f}x | {train['max_abs_loss_gap']:.4f} / {train['max_rel_loss_gap']:.2%} |"]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"check that it runs: {QUICK}")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--train-steps", type=int, default=0, metavar="N", help="also time N bf16 vs fp32 training steps")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/frozen_pass_<size>px.json)")
    return p


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    out = args.out or RESULTS_DIR / f"frozen_pass_{settings['image_size']}px{'_quick' if args.quick else ''}.json"
    cpu_name, flags = cpu_info()
    report = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "settings": settings | {"batch_size": BATCH_SIZE},
              "environment": {"torch": torch.__version__, "timm": version("timm"),
                              "onnxruntime": version("onnxruntime"), "onnx": version("onnx"),
                              "onnxscript": version("onnxscript"), "threads": torch.get_num_threads(),
                              "python": platform.python_version(), "cpu": cpu_name,
                              "cpu_bf16_flags": sorted(flags & BF16_CPU_FLAGS),
                              "load_average_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="transferlab-bench-") as tmp:
        work = Path(tmp)
        report["frozen_pass"] = []
        for name, pretrained in BACKBONES.items():
            print(f"frozen pass: {name} at {settings['image_size']} px ...", flush=True)
            report["frozen_pass"].append(measure_frozen_pass(name, pretrained, settings, work))
        if args.train_steps:
            print(f"training steps: bf16 autocast vs fp32, {args.train_steps} each ...", flush=True)
            report["train_steps"] = measure_train_steps(args.train_steps, settings, work)
    report["environment"]["load_average_at_end"] = os.getloadavg()
    print()
    print(f"{settings['images']} embedded images at {settings['image_size']} px, batch {BATCH_SIZE}, "
          f"{torch.get_num_threads()} threads, {settings['rounds']} alternating rounds (median); "
          f"CPU bf16 flags: {', '.join(report['environment']['cpu_bf16_flags']) or 'none'}")
    print()
    print(markdown_tables(report))
    if args.quick:
        print("\n--quick checks that everything runs; its numbers say nothing.")
    write_json_atomic(out, report)
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
