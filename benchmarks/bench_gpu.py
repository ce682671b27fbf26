"""The GPU path, measured: transferlab's feature pass, its fine-tuning loop against timm's own, and the decode
rate that feeds them; img/s each.

  feature pass   training/prefix_cache.prefix_outputs as compare calls it (engine torch: bf16 autocast,
                 channels_last, uint8 pixels from the decoded memory map -> GPU -> normalise -> prefix ->
                 fp16 rows on disk), plus the bare forward on a batch already on the GPU (the ceiling)
  fine-tuning    every layer trainable, AdamW, bf16 autocast, channels_last, through training/loop.train_phase,
                 against timm's train.py inner loop written out (it is a script, not a library): GPU-side
                 normalisation as its prefetcher does, cudnn.benchmark on as train.py sets it, autocast bf16,
                 loss.item() every step as its non-distributed meter does, zero_grad after the step.
                 Target: transferlab >= 90 % of timm's img/s. The two take turns, epoch 1 of each is warm-up.
  decode         JPEGs (smooth synthetic photos, 500x375) to model-sized uint8: Pillow one thread
                 (data/images.load_for_model), the project's decode_images (threads, hashing and the cache
                 write included), Pillow in one process per core, and torchvision.io.decode_jpeg on the GPU
                 (batched nvJPEG) with the resize on the GPU. The feature pass is decode-bound when it eats
                 images faster than a decoder makes them.

Models: tf_efficientnet_lite0 (the offline default, its packaged weights) and resnet50 (random weights),
224 px, batch 64 and 128. Needs no network. Without CUDA it exits 2 with one line; --cpu-smoke runs every
path on the CPU at tiny sizes to show that it works (its numbers say nothing).

    .venv/bin/python benchmarks/bench_gpu.py                 # on a CUDA machine: the published numbers
    .venv/bin/python benchmarks/bench_gpu.py --cpu-smoke     # anywhere, ~1 min
"""

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np
import timm
import timm.optim
import torch
import torchvision
from PIL import Image
from torch import nn

from transferlab.atomic import write_json_atomic
from transferlab.data.decoded import decode_images
from transferlab.data.images import Preprocessing, load_for_model
from transferlab.data.scan import scan_image_folder
from transferlab.models.backbones import OFFLINE_BACKBONE, load_backbone
from transferlab.models.transfer_model import TransferModel
from transferlab.training.inputs import ImageInputs
from transferlab.training.loop import PhaseSpec, train_phase
from transferlab.training.recipes import Optimization
from transferlab.training.prefix_cache import prefix_outputs

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODELS = {OFFLINE_BACKBONE: True, "resnet50": False}  # name: pretrained (resnet50 has no offline weights)
FULL = {"image_size": 224, "images": 1024, "batch_sizes": [64, 128], "epochs": 4, "rounds": 2,
        "jpeg_size": [500, 375], "device": "cuda"}
SMOKE = {"image_size": 32, "images": 16, "batch_sizes": [8], "epochs": 2, "rounds": 1, "jpeg_size": [64, 48],
         "device": "cpu"}
N_CLASSES = 5
LR, WEIGHT_DECAY = 1e-3, 0.05   # the default recipe's fine-tuning optimizer (AdamW)
TARGET_VS_TIMM = 0.90


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    """Photo-like JPEGs: smooth colour fields with mild noise (pure noise would decode unrealistically slowly)."""
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(small, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
        class_dir = folder / f"class{i % N_CLASSES}"
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(class_dir / f"{i:05d}.jpg", quality=90)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def gpu_decode(paths: list[Path], prep: Preprocessing, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """nvJPEG batch decode, then timm's eval geometry (shorter side to size/crop_pct, centre crop) on the GPU."""
    size = prep.image_size_px
    scale = int(size / prep.crop_pct)
    out = []
    for start in range(0, len(paths), batch_size):
        data = [torchvision.io.read_file(str(p)) for p in paths[start:start + batch_size]]
        for image in torchvision.io.decode_jpeg(data, device=device):
            h, w = image.shape[1:]
            new = (scale, max(size, round(w * scale / h))) if h <= w else (max(size, round(h * scale / w)), scale)
            x = nn.functional.interpolate(image[None].float(), size=new, mode="bicubic", antialias=True)
            top, left = (new[0] - size) // 2, (new[1] - size) // 2
            out.append(x[..., top:top + size, left:left + size].clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    sync(device)
    return out


def measure_decode(folder: Path, prep: Preprocessing, settings: dict, device: torch.device, work: Path) -> dict:
    images = scan_image_folder(folder).images
    paths = [im.path for im in images]
    workers = os.cpu_count() or 1
    rates = {}
    rates["pillow_1_thread"] = len(paths) / timed(lambda: [load_for_model(p, prep) for p in paths])
    rates["transferlab_decode_images"] = len(paths) / timed(
        lambda: decode_images(images, prep, work / f"decode-{time.monotonic_ns()}", show_progress=False))
    # spawned, not forked: the parent may already hold a CUDA context
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(load_for_model, paths[:workers], [prep] * workers))  # start the workers
        rates[f"pillow_{workers}_processes"] = len(paths) / timed(
            lambda: list(pool.map(load_for_model, paths, [prep] * len(paths), chunksize=16)))
    batch = settings["batch_sizes"][-1]
    gpu_decode(paths[:batch], prep, batch, device)  # warm-up: nvJPEG handles, kernels
    rates[f"decode_jpeg_{device.type}"] = len(paths) / timed(lambda: gpu_decode(paths, prep, batch, device))
    return {"images": len(paths), "jpeg_size": settings["jpeg_size"], "img_per_s": rates}


def measure_feature_pass(name: str, pretrained: bool, decoded, batch_size: int, rounds: int, device: torch.device,
                         work: Path) -> dict:
    backbone = load_backbone(name, None, decoded.prep.image_size_px, pretrained=pretrained)
    model = TransferModel(backbone.module, N_CLASSES).to(device, memory_format=torch.channels_last).eval()
    end = len(model.units)
    run = lambda: prefix_outputs(model, [end], decoded.pixels, decoded.keys, backbone.preprocessing,  # noqa: E731
                                 work / f"prefix-{time.monotonic_ns()}", backbone.cache_key, device,
                                 batch_size=batch_size, engine="torch", show_progress=False)
    run()  # warm-up (a fresh cache folder each time, so every run computes every row)
    path_seconds = [timed(lambda: (run(), sync(device))) for _ in range(rounds)]
    x = ImageInputs(decoded.pixels, backbone.preprocessing, device).batch(np.arange(batch_size) % len(decoded.keys), 0)
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16):
        model.prefixes(x, [end])
        sync(device)
        steps = max(1, len(decoded.keys) // batch_size)
        bare = timed(lambda: ([model.prefixes(x, [end]) for _ in range(steps)], sync(device)))
    return {"backbone": name, "batch_size": batch_size, "img_per_s": len(decoded.keys) / statistics.median(path_seconds),
            "bare_forward_img_per_s": steps * batch_size / bare}


def transferlab_epochs(model: TransferModel, decoded, prep: Preprocessing, labels: np.ndarray, batch_size: int,
                       epochs: int, device: torch.device) -> list[float]:
    """Seconds per epoch of train_phase, every layer trainable (the validation pass is one image)."""
    for p in model.parameters():
        p.requires_grad_(True)
    spec = PhaseSpec(name="bench", epochs=epochs, learning_rate=LR, batch_size=batch_size, seed=0,
                     optimization=Optimization(optimizer="adamw", weight_decay=WEIGHT_DECAY), precision="bf16")
    inputs = ImageInputs(decoded.pixels, prep, device)
    one = ImageInputs(decoded.pixels[np.array([0])], prep, device)
    state = train_phase(model, model, inputs, labels, one, labels[:1], spec, [model], device, show_progress=False)
    return [row["seconds"] for row in state.history]


def timm_epochs(model: nn.Module, decoded, prep: Preprocessing, labels: np.ndarray, batch_size: int, epochs: int,
                device: torch.device) -> list[float]:
    """timm train.py's train_one_epoch, reduced to what runs by default with --amp --amp-dtype bfloat16
    --channels-last on one GPU: prefetcher normalisation on the GPU, autocast, step, loss.item() for the meter."""
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = nn.CrossEntropyLoss().to(device)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255
    target_all = torch.from_numpy(labels)
    seconds = []
    for epoch in range(epochs):
        model.train()
        order = np.random.default_rng(epoch).permutation(len(labels))
        started = time.perf_counter()
        for start in range(0, len(order), batch_size):
            positions = order[start:start + batch_size]
            pixels = torch.from_numpy(decoded.pixels[positions]).to(device, non_blocking=True)
            target = target_all[positions].to(device, non_blocking=True)
            x = pixels.permute(0, 3, 1, 2).float().sub_(mean).div_(std)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                output = model(x)
                loss = loss_fn(output, target)
            loss.backward()
            optimizer.step()
            loss.item()  # train.py: losses_m.update(loss.item() * accum_steps, input.size(0))
            optimizer.zero_grad()
        sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure_finetune(name: str, pretrained: bool, decoded, batch_size: int, settings: dict,
                     device: torch.device) -> dict:
    backbone = load_backbone(name, None, settings["image_size"], pretrained=pretrained)
    torch.manual_seed(0)
    ours = TransferModel(backbone.module, N_CLASSES).to(device, memory_format=torch.channels_last)
    theirs = timm.create_model(name, pretrained=False, num_classes=N_CLASSES).to(device,
                                                                                 memory_format=torch.channels_last)
    labels = np.arange(len(decoded.keys)) % N_CLASSES
    prep = backbone.preprocessing
    seconds: dict[str, list[float]] = {"transferlab": [], "timm": []}
    for round_ in range(settings["rounds"]):
        for who in (("transferlab", "timm") if round_ % 2 == 0 else ("timm", "transferlab")):
            torch.backends.cudnn.benchmark = who == "timm"  # train.py turns it on; transferlab leaves the default
            run = transferlab_epochs if who == "transferlab" else timm_epochs
            seconds[who] += run(ours if who == "transferlab" else theirs, decoded, prep, labels, batch_size,
                                settings["epochs"], device)[1:]  # epoch 1 warms up
    torch.backends.cudnn.benchmark = False
    rate = {who: len(labels) / statistics.median(s) for who, s in seconds.items()}
    return {"backbone": name, "batch_size": batch_size, "img_per_s": rate,
            "transferlab_vs_timm": rate["transferlab"] / rate["timm"],
            "target_met": rate["transferlab"] / rate["timm"] >= TARGET_VS_TIMM, "seconds_per_epoch": seconds}


class Decoded:
    """The decoded training images as compare holds them: a memory map of uint8 pixels and content keys."""

    def __init__(self, folder: Path, prep: Preprocessing, cache: Path):
        decoded = decode_images(scan_image_folder(folder).images, prep, cache, show_progress=False)
        self.pixels, self.keys, self.prep = decoded.pixels, decoded.content_keys, prep


def markdown_tables(report: dict) -> str:
    decode = report["decode"]["img_per_s"]
    lines = ["| decoder (JPEG → model input) | img/s |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in decode.items()]
    best_cpu = max(v for k, v in decode.items() if not k.startswith("decode_jpeg"))
    gpu = next(v for k, v in decode.items() if k.startswith("decode_jpeg"))
    lines += ["", "| feature pass | batch | img/s (transferlab path) | bare forward img/s | decode-bound on the best "
              "CPU decoder / on GPU decode |", "|---|---:|---:|---:|---|"]
    for r in report["feature_pass"]:
        lines.append(f"| {r['backbone']} | {r['batch_size']} | {r['img_per_s']:.0f} | "
                     f"{r['bare_forward_img_per_s']:.0f} | {'yes' if r['img_per_s'] > best_cpu else 'no'} / "
                     f"{'yes' if r['img_per_s'] > gpu else 'no'} |")
    lines += ["", "| fine-tuning, all layers | batch | transferlab img/s | timm loop img/s | ratio | ≥ 90 % |",
              "|---|---:|---:|---:|---:|---|"]
    for r in report["finetune"]:
        lines.append(f"| {r['backbone']} | {r['batch_size']} | {r['img_per_s']['transferlab']:.0f} | "
                     f"{r['img_per_s']['timm']:.0f} | {r['transferlab_vs_timm']:.2f} | "
                     f"{'yes' if r['target_met'] else '**no**'} |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help=f"every code path on the CPU, tiny: {SMOKE}")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gpu_<device>.json)")
    return p


def main(args: argparse.Namespace) -> dict:
    settings = SMOKE if args.cpu_smoke else FULL
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("error: bench_gpu.py needs a CUDA GPU and none is visible; --cpu-smoke checks every path on the CPU",
              file=sys.stderr)
        sys.exit(2)
    device = torch.device(settings["device"])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    slug = "cpu_smoke" if args.cpu_smoke else device_name.lower().replace(" ", "_")
    out = args.out or RESULTS_DIR / f"gpu_{slug}.json"
    report = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "settings": settings,
              "environment": {"device": device_name, "torch": torch.__version__, "torchvision": torchvision.__version__,
                              "timm": version("timm"), "pillow": version("pillow"), "cpus": os.cpu_count(),
                              "python": platform.python_version()}}
    with tempfile.TemporaryDirectory(prefix="transferlab-bench-gpu-") as tmp:
        work = Path(tmp)
        print(f"writing {settings['images']} JPEGs ...", flush=True)
        write_jpegs(work / "jpegs", settings["images"], tuple(settings["jpeg_size"]))
        prep = load_backbone(OFFLINE_BACKBONE, None, settings["image_size"]).preprocessing
        print("decode rates ...", flush=True)
        report["decode"] = measure_decode(work / "jpegs", prep, settings, device, work)
        decoded = Decoded(work / "jpegs", prep, work / "decoded")
        report["feature_pass"], report["finetune"] = [], []
        for name, pretrained in MODELS.items():
            for batch_size in settings["batch_sizes"]:
                print(f"{name}, batch {batch_size}: feature pass, then fine-tuning vs timm ...", flush=True)
                report["feature_pass"].append(measure_feature_pass(name, pretrained, decoded, batch_size,
                                                                   settings["rounds"], device, work))
                report["finetune"].append(measure_finetune(name, pretrained, decoded, batch_size, settings, device))
    print()
    print(f"{device_name}; {settings['images']} images at {settings['image_size']} px; medians over "
          f"{settings['rounds']} rounds")
    print()
    print(markdown_tables(report))
    if args.cpu_smoke:
        print("\n--cpu-smoke checks that every path runs; its numbers say nothing.")
    write_json_atomic(out, report)
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
