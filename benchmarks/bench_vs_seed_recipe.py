"""transferlab's cached phases vs. the seeds' recipe done naively, on the same images, split and backbone.

The seeds (a Keras tutorial) run the frozen base on every image in every epoch. transferlab runs the frozen
prefix once into a cache and trains only what is trainable. This script measures both in one process:

  floor        one inference pass of the base over train+val (decoded pixels in, pooled features out),
               the fastest of 3
  transferlab  run_compare with a fresh cache dir (cold), then again with the same cache dir (warm)
  seed recipe  the same model, the same `train_phase`, but every batch is pixels through `model.forward`

and prints val accuracy, wall seconds per phase, peak RSS and the ratios beside their targets.

    .venv/bin/python benchmarks/bench_vs_seed_recipe.py --quick                  # smoke test, 1-2 min on CPU
    .venv/bin/python benchmarks/bench_vs_seed_recipe.py                          # the published numbers
    .venv/bin/python benchmarks/bench_vs_seed_recipe.py --rss-images 5000        # + decode/cache memory

Peak RSS is `ru_maxrss`: the process-wide high-water mark. It never goes down, so the value after a step
covers that step and every step before it; `--rss-images` runs in its own process for that reason.
"""

import argparse
import importlib.util
import json
import multiprocessing
import platform
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from transferlab.atomic import write_json_atomic
from transferlab.data.decoded import DecodedImages, decode_images
from transferlab.data.embedded import export_embedded
from transferlab.data.scan import LabelledImage
from transferlab.experiments.compare import Split, load_split, resolve_device, run_compare, scan_folders
from transferlab.experiments.config import CompareConfig
from transferlab.models.backbones import OFFLINE_BACKBONE, load_backbone
from transferlab.models.freezing import freeze_backbone, unfreeze_last_layers
from transferlab.models.transfer_model import TransferModel
from transferlab.training.inputs import ImageInputs
from transferlab.training.loop import PhaseSpec, autocast, evaluate, train_phase
from transferlab.training.prefix_cache import prefix_outputs

RESULTS_DIR = Path(__file__).resolve().parent / "results"
EMBEDDED_TRAIN_PER_CLASS = 100
FULL = {"image_size": 224,          # the seeds' input size
        "images_per_class": EMBEDDED_TRAIN_PER_CLASS,
        "epochs_frozen": 5, "epochs_finetune": 5,  # the seeds' two fits
        "epochs_scratch": 10}       # CompareConfig's default: enough to show scratch overfits
QUICK = {"image_size": 64, "images_per_class": 20, "epochs_frozen": 1, "epochs_finetune": 1, "epochs_scratch": 1}
FLOOR_BATCH_SIZE = 64               # prefix_outputs' batch size: the floor does the cache's work, minus the cache
FLOOR_PASSES = 3                    # min of 3: the first pays one-off kernel set-up, and the floor is a best case
RSS_IMAGE_SIZE_PX = 224
CHANNELS_LAST = torch.channels_last  # compare's memory format for the transfer model: same conv kernels here
MAX_VAL_ACC_GAP = 0.01              # "val acc within 1 point" of the seed recipe
TARGETS = {  # name: (measured is ... than, bound)
    "transferlab frozen / floor": ("<=", 1.3),
    "seed recipe total / transferlab total": (">=", 5.0),
    "warm frozen / floor": ("<=", 0.1),
}


def peak_rss_mib() -> float:
    """Process-wide high-water mark (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def own_peak_rss_mib() -> float:
    """For a spawned child: Linux keeps ru_maxrss across exec, so a child of a 1 GiB parent reads >= 1 GiB.

    VmHWM belongs to the address space, which exec replaces; elsewhere fall back to ru_maxrss.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    return peak_rss_mib()


def labels_of(decoded: DecodedImages) -> np.ndarray:
    return np.array([im.label for im in decoded.images], dtype=np.int64)


def prepare_data(work: Path, images_per_class: int) -> tuple[Path, Path]:
    """The embedded Fashion-MNIST export; the first N training images per class when N < 100."""
    train_dir, val_dir = export_embedded(work / "embedded")
    if images_per_class >= EMBEDDED_TRAIN_PER_CLASS:
        return train_dir, val_dir
    subset = work / f"train_{images_per_class}_per_class"
    for class_dir in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        (subset / class_dir.name).mkdir(parents=True)
        for png in sorted(class_dir.glob("*.png"))[:images_per_class]:
            shutil.copy2(png, subset / class_dir.name / png.name)
    return subset, val_dir


def decode_split(cfg: CompareConfig, cache_dir: Path, work: Path) -> tuple[Split, float]:
    """The same scan + decode compare does, into `cache_dir`; returns the split and its seconds."""
    prep = load_backbone(cfg.backbone, None, cfg.image_size_px).preprocessing
    started = time.perf_counter()
    split = load_split(cfg, scan_folders(cfg), prep, cache_dir, run_dir=work, resuming=False)[0]  # run_dir: unused for train/val
    return split, time.perf_counter() - started


def measure_floor(cfg: CompareConfig, split: Split, device: torch.device) -> dict:
    """No-grad passes of the base over train+val; the floor is the fastest (the first one also warms up)."""
    pretrained = load_backbone(cfg.backbone, None, cfg.image_size_px)
    model = TransferModel(pretrained.module, len(split.class_names)).to(device, memory_format=CHANNELS_LAST).eval()
    end = len(model.units)
    sources = [ImageInputs(d.pixels, pretrained.preprocessing, device) for d in (split.train, split.val)]
    passes = []
    with torch.no_grad(), autocast(device):
        for _ in range(FLOOR_PASSES):
            started = time.perf_counter()
            for images in sources:
                for start in range(0, len(images), FLOOR_BATCH_SIZE):
                    positions = np.arange(start, min(start + FLOOR_BATCH_SIZE, len(images)))
                    model.prefix(images.batch(positions, 0), end).float().cpu()
            passes.append(time.perf_counter() - started)
    return {"seconds": min(passes), "passes_seconds": passes, "images": sum(len(s) for s in sources),
            "batch_size": FLOOR_BATCH_SIZE}


def run_transferlab(cfg: CompareConfig) -> dict:
    run_dir = run_compare(cfg)
    results = json.loads((run_dir / "results.json").read_text())
    phases = {name: {k: p[k] for k in ("val_acc", "seconds", "cache_seconds", "train_seconds",
                                       "trainable_parameters", "epochs")}
              for name, p in results["phases"].items()}
    return {"run_dir": str(run_dir), "decode_seconds": results["decode_seconds"], "phases": phases,
            "total_seconds": results["verdict"]["transfer_seconds"],  # decode + frozen + fine-tune
            "model_phase": results["model_phase"]}


def run_seed_recipe(cfg: CompareConfig, split: Split, decode_seconds: float, device: torch.device) -> dict:
    """The seeds' two fits through the project's own loop: only the forward and the inputs differ.

    The whole model is the forward and normalised pixels are the inputs, so the frozen base runs on every
    batch of every epoch. Autograd still stops at the first layer that trains, as Keras' tape does.
    """
    pretrained = load_backbone(cfg.backbone, None, cfg.image_size_px)
    prep = pretrained.preprocessing
    train_in, val_in = (ImageInputs(d.pixels, prep, device) for d in (split.train, split.val))
    train_labels, val_labels = labels_of(split.train), labels_of(split.val)
    torch.manual_seed(cfg.seed)  # as compare does, so both heads start from the same weights
    model = TransferModel(pretrained.module, len(split.class_names)).to(device, memory_format=CHANNELS_LAST)
    steps = (("frozen", freeze_backbone, cfg.frozen_epochs, cfg.frozen_lr),
             ("finetuned", lambda m: unfreeze_last_layers(m, cfg.unfreeze_last), cfg.finetune_epochs,
              cfg.finetune_lr))
    phases = {}
    for name, choose_trainable, epochs, lr in steps:
        plan = choose_trainable(model)
        spec = PhaseSpec(name=f"seed {name}", epochs=epochs, learning_rate=lr, batch_size=cfg.batch_size,
                         seed=cfg.seed)
        started = time.perf_counter()
        state = train_phase(model, model, train_in, train_labels, val_in, val_labels, spec, [model.head],
                            device, show_progress=cfg.show_progress)
        seconds = time.perf_counter() - started
        final = evaluate(model, val_in, val_labels, cfg.batch_size * 2, device)
        phases[name] = {"val_acc": final.accuracy, "seconds": seconds, "cache_seconds": 0.0,
                        "train_seconds": seconds, "trainable_parameters": plan.trainable_parameters,
                        "epochs": state.history}
    return {"decode_seconds": decode_seconds, "phases": phases,
            "total_seconds": decode_seconds + sum(p["seconds"] for p in phases.values())}


def measure_decode_and_cache_rss(n_images: int, backbone: str, device_name: str, seed: int) -> dict:
    """In a fresh process: peak RSS while N random-noise PNGs are decoded and their features cached."""
    device = resolve_device(device_name)
    with tempfile.TemporaryDirectory(prefix="transferlab-rss-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        rng = np.random.default_rng(seed)
        images = []
        for i in range(n_images):
            path = folder / f"noise_{i:06d}.png"
            Image.fromarray(rng.integers(0, 256, (RSS_IMAGE_SIZE_PX, RSS_IMAGE_SIZE_PX, 3), np.uint8)).save(path)
            images.append(LabelledImage(path, 0))
        pretrained = load_backbone(backbone, None, RSS_IMAGE_SIZE_PX)
        prep = pretrained.preprocessing
        model = TransferModel(pretrained.module, 2).to(device, memory_format=CHANNELS_LAST)
        freeze_backbone(model)
        rss = {"after_model_mib": own_peak_rss_mib()}
        started = time.perf_counter()
        decoded = decode_images(images, prep, Path(tmp) / "cache", show_progress=False)
        decode_seconds = time.perf_counter() - started
        rss["after_decode_mib"] = own_peak_rss_mib()
        started = time.perf_counter()
        prefix_outputs(model, [len(model.units)], decoded.pixels, decoded.content_keys, prep, Path(tmp) / "cache",
                       pretrained.cache_key, device, show_progress=False)
        cache_seconds = time.perf_counter() - started
        rss["after_cache_mib"] = own_peak_rss_mib()
    return {"images": n_images, "image_size_px": RSS_IMAGE_SIZE_PX,
            "decoded_pixels_mib": n_images * RSS_IMAGE_SIZE_PX ** 2 * 3 / 2**20,
            "decode_seconds": decode_seconds, "cache_seconds": cache_seconds, "peak_rss": rss}


def run_keras_seed(train_dir: Path, val_dir: Path, cfg: CompareConfig) -> dict:
    """In a fresh process: the seeds' procedure in Keras (MobileNetV2: Keras has no EfficientNet-Lite).

    Written from the seeds' description (the seed files are not in this repository): base(training=False),
    GAP -> Dense 128 relu -> Dropout 0.3 -> Dense n; fit; base.layers[-20:] trainable; fit at 1e-5.
    """
    import tensorflow as tf

    tf.keras.utils.set_random_seed(cfg.seed)
    size = (cfg.image_size_px, cfg.image_size_px)
    started = time.perf_counter()
    train_ds, val_ds = (tf.keras.utils.image_dataset_from_directory(
        d, image_size=size, batch_size=cfg.batch_size, color_mode="rgb", shuffle=shuffle, seed=cfg.seed)
        for d, shuffle in ((train_dir, True), (val_dir, False)))
    n_classes = len(train_ds.class_names)
    base = tf.keras.applications.MobileNetV2(input_shape=(*size, 3), include_top=False, weights="imagenet")
    base.trainable = False
    inputs = tf.keras.Input((*size, 3))
    x = base(tf.keras.applications.mobilenet_v2.preprocess_input(inputs), training=False)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.Dropout(0.3)(tf.keras.layers.Dense(128, activation="relu")(x))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(n_classes)(x))
    setup_seconds = time.perf_counter() - started
    phases = {}
    for name, epochs, lr in (("frozen", cfg.frozen_epochs, cfg.frozen_lr),
                             ("finetuned", cfg.finetune_epochs, cfg.finetune_lr)):
        if name == "finetuned":
            base.trainable = True
            for layer in base.layers[:-cfg.unfreeze_last]:
                layer.trainable = False
        model.compile(optimizer=tf.keras.optimizers.Adam(lr), metrics=["accuracy"],
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        started = time.perf_counter()
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0)
        seconds = time.perf_counter() - started
        phases[name] = {"val_acc": float(model.evaluate(val_ds, verbose=0)[1]), "seconds": seconds,
                        "cache_seconds": 0.0, "train_seconds": seconds}
    # Keras decodes inside fit, every epoch; "decode" here is dataset + model set-up (and any weight download)
    return {"backbone": "keras MobileNetV2", "tensorflow": tf.__version__, "decode_seconds": setup_seconds,
            "phases": phases, "total_seconds": setup_seconds + sum(p["seconds"] for p in phases.values()),
            "peak_rss_mib": own_peak_rss_mib()}


def in_fresh_process(fn, *args):
    """Spawned, not forked: no copy of our tensors, and its own VmHWM (see own_peak_rss_mib)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def against_target(name: str, measured: float, extra_ok: bool = True) -> dict:
    op, bound = TARGETS[name]
    met = (measured <= bound if op == "<=" else measured >= bound) and extra_ok
    return {"measured": measured, "target": f"{op} {bound:g}", "met": met}


def ratios_of(floor: dict, cold: dict, warm: dict, seed: dict) -> dict:
    acc_gap = seed["phases"]["finetuned"]["val_acc"] - cold["phases"]["finetuned"]["val_acc"]
    seed_ratio = against_target("seed recipe total / transferlab total", seed["total_seconds"] / cold["total_seconds"],
                               abs(acc_gap) <= MAX_VAL_ACC_GAP)
    seed_ratio["val_acc_gap"] = acc_gap  # seed minus transferlab, fine-tuned phase; must be within 1 point
    return {"transferlab frozen / floor": against_target("transferlab frozen / floor",
                                                         cold["phases"]["frozen"]["seconds"] / floor["seconds"]),
            "seed recipe total / transferlab total": seed_ratio,
            "warm frozen / floor": against_target("warm frozen / floor",
                                                 warm["phases"]["frozen"]["seconds"] / floor["seconds"])}


RUN_LABELS = {"transferlab_cold": "transferlab (cold cache)", "transferlab_warm": "transferlab (warm cache)",
              "seed_recipe": "seed recipe (PyTorch)", "keras_seed": "seed recipe (Keras, own process)"}


def markdown_tables(report: dict) -> str:
    def row(*cells) -> str:
        return "| " + " | ".join(cells) + " |"

    def num(v, fmt=".2f") -> str:
        return "" if v is None else format(v, fmt)

    rss, floor = report["peak_rss_mib_after"], report["floor"]
    lines = [row("run", "phase", "val acc", "decode s", "cache s", "train s", "seconds", "peak RSS MiB*"),
             row(*["---"] * 3, *["---:"] * 5),
             row("floor", f"base inference, {floor['images']} images, best of {FLOOR_PASSES}", "",
                 num(floor["decode_seconds"]), "", "", num(floor["seconds"]), num(rss["floor"], ".0f"))]
    for key, label in RUN_LABELS.items():
        run = report.get(key)
        if not run:
            continue
        for name, p in run["phases"].items():
            lines.append(row(label, name, num(p["val_acc"], ".3f"), "", num(p["cache_seconds"]),
                             num(p["train_seconds"]), num(p["seconds"]), ""))
        lines.append(row(label, "**total**: decode + frozen + fine-tune", "", num(run["decode_seconds"]), "", "",
                         num(run["total_seconds"]), num(rss.get(key, run.get("peak_rss_mib")), ".0f")))
    lines += ["", "\\* `ru_maxrss`: this process's high-water mark after the run, so it includes every row above.",
              "Scratch, when run, is in no total.", "",
              row("ratio", "measured", "target", "met"), row("---", "---:", "---", "---")]
    for name, r in report["ratios"].items():
        target = r["target"]
        if "val_acc_gap" in r:
            target += f", val acc gap {r['val_acc_gap']:+.3f} within ±{MAX_VAL_ACC_GAP}"
        lines.append(row(name, f"{r['measured']:.2f}x", target, "yes" if r["met"] else "**no**"))
    if report.get("rss_images"):
        r = report["rss_images"]
        peaks = ", ".join(f"{k.removesuffix('_mib').replace('_', ' ')} {v:.0f} MiB" for k, v in r["peak_rss"].items())
        lines += ["", f"decode + feature cache of {r['images']} noise images at {r['image_size_px']} px, own process "
                      f"(decoded pixels {r['decoded_pixels_mib']:.0f} MiB): peak RSS {peaks}; "
                      f"decode {r['decode_seconds']:.1f} s, cache {r['cache_seconds']:.1f} s"]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default=OFFLINE_BACKBONE, help="timm name (default: %(default)s, offline weights)")
    p.add_argument("--image-size", type=int, help=f"pixels (default {FULL['image_size']})")
    p.add_argument("--images-per-class", type=int,
                   help=f"training images per class, 1..{EMBEDDED_TRAIN_PER_CLASS} (default all); val stays 100")
    p.add_argument("--epochs-frozen", type=int, help=f"default {FULL['epochs_frozen']}")
    p.add_argument("--epochs-finetune", type=int, help=f"default {FULL['epochs_finetune']}")
    p.add_argument("--epochs-scratch", type=int, help=f"default {FULL['epochs_scratch']}")
    p.add_argument("--skip-scratch", action="store_true", help="skip transferlab's from-scratch phase")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    p.add_argument("--batch-size", type=int, default=32,
                   help="both sides (default %(default)s: Keras' default, which the seeds used)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice); recorded either way")
    p.add_argument("--rss-images", type=int, default=0, metavar="N",
                   help=f"also measure peak RSS of decoding + caching N noise images at {RSS_IMAGE_SIZE_PX} px, "
                        "in a separate process (default 0: skip)")
    p.add_argument("--keras-seed", action="store_true",
                   help="also run the seeds' procedure in Keras if tensorflow is installed (never installs it)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/vs_seed_recipe_<settings>.json)")
    return p


def main(args: argparse.Namespace) -> dict:
    settings = {k: getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else FULL)[k]
                for k in FULL}
    if not 1 <= settings["images_per_class"] <= EMBEDDED_TRAIN_PER_CLASS:
        raise SystemExit(f"--images-per-class must be 1..{EMBEDDED_TRAIN_PER_CLASS} "
                         f"(got {settings['images_per_class']})")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = args.out or RESULTS_DIR / (f"vs_seed_recipe_{args.backbone}_{settings['image_size']}px_"
                                     f"{settings['images_per_class']}pc{'_quick' if args.quick else ''}.json")
    environment = {"device": str(device), "torch": torch.__version__, "timm": timm.__version__,
                   "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                   "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    report: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": settings,
                    "environment": environment, "peak_rss_mib_after": {"start": peak_rss_mib()}}
    rss = report["peak_rss_mib_after"]

    with tempfile.TemporaryDirectory(prefix="transferlab-bench-") as tmp:
        work = Path(tmp)
        train_dir, val_dir = prepare_data(work, settings["images_per_class"])
        cfg = CompareConfig(train_dir=train_dir, val_dir=val_dir, backbone=args.backbone,
                            image_size_px=settings["image_size"], frozen_epochs=settings["epochs_frozen"],
                            finetune_epochs=settings["epochs_finetune"], scratch_epochs=settings["epochs_scratch"],
                            skip_scratch=args.skip_scratch, batch_size=args.batch_size, seed=args.seed,
                            device=args.device, cache_dir=work / "cache-transferlab", runs_dir=work / "runs",
                            name="bench", show_progress=args.progress)
        report["recipe"] = {k: getattr(cfg, k) for k in ("batch_size", "frozen_lr", "finetune_lr", "unfreeze_last")}

        print(f"floor: {FLOOR_PASSES} inference passes of {args.backbone} over train+val ...", flush=True)
        split, decode_seconds = decode_split(cfg, work / "cache-floor", work)
        report["data"] = {"n_train": len(split.train.images), "n_val": len(split.val.images),
                          "classes": list(split.class_names)}
        report["floor"] = {**measure_floor(cfg, split, device), "decode_seconds": decode_seconds}
        rss["floor"] = peak_rss_mib()

        print("transferlab compare, cold cache ...", flush=True)
        report["transferlab_cold"] = run_transferlab(cfg)
        rss["transferlab_cold"] = peak_rss_mib()
        print("transferlab compare, warm cache ...", flush=True)
        report["transferlab_warm"] = run_transferlab(replace(cfg, skip_scratch=True))
        rss["transferlab_warm"] = peak_rss_mib()

        print("seed recipe: base recomputed every batch ...", flush=True)
        split, decode_seconds = decode_split(cfg, work / "cache-seed", work)
        report["seed_recipe"] = run_seed_recipe(cfg, split, decode_seconds, device)
        rss["seed_recipe"] = peak_rss_mib()

        report["ratios"] = ratios_of(report["floor"], report["transferlab_cold"], report["transferlab_warm"],
                                     report["seed_recipe"])
        if args.rss_images:
            print(f"decode + cache RSS of {args.rss_images} noise images, in its own process ...", flush=True)
            report["rss_images"] = in_fresh_process(measure_decode_and_cache_rss, args.rss_images, args.backbone,
                                                    args.device, args.seed)
        if args.keras_seed and importlib.util.find_spec("tensorflow") is None:
            print("keras seed: skipped (tensorflow is not installed; this script never installs it)")
            report["keras_seed"] = None
        elif args.keras_seed:
            print("seed recipe in Keras, in its own process ...", flush=True)
            report["keras_seed"] = in_fresh_process(run_keras_seed, train_dir, val_dir, cfg)

    report["notes"] = [
        "peak RSS is ru_maxrss of this process: monotone, so each value includes everything run before it",
        "floor and seed recipe decode into their own fresh cache dirs; transferlab's cold run gets a fresh one",
        "transferlab phase seconds include its per-epoch checkpoints; the seed recipe writes none",
        "val acc compared on the fine-tuned phase; train_phase restores each phase's best-val epoch on both sides",
    ]
    print()
    print(f"{args.backbone} at {settings['image_size']} px, {report['data']['n_train']} train / "
          f"{report['data']['n_val']} val images, epochs frozen {settings['epochs_frozen']} + fine-tune "
          f"{settings['epochs_finetune']}, batch {cfg.batch_size}, lr {cfg.frozen_lr:g} / {cfg.finetune_lr:g}, "
          f"last {cfg.unfreeze_last} layers; {device}, torch threads: {torch.get_num_threads()}")
    print()
    print(markdown_tables(report))
    if args.quick:
        print("\n--quick checks that everything runs; with one epoch per phase its ratios say nothing.")
    write_json_atomic(out, report)
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
