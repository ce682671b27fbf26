"""transferlab's cached phases vs. the seeds' recipe done naively, on the same images, split, backbone and epochs.

The seeds (seed 002, a Keras tutorial) run the frozen base on every image in every epoch. transferlab runs
the frozen prefix once into a cache and trains only what is trainable. One invocation measures, on the
embedded train/val/test images with `--recipe seeds` (5 + 5 epochs, the last 20 Keras layers):

  floor        one no-grad pass of the frozen base over train+val (what the frozen phase computes), on
               PyTorch eager (channels_last) and on ONNX Runtime (its export timed apart); best = the faster
  transferlab  run_compare with a fresh cache dir (cold), then again on the same cache dir (warm), engine auto
  seed, torch  the same model and the same `train_phase`, but every batch is pixels through `model.forward`
  seed, keras  (--keras) seed 002's code in Keras in a fresh process: MobileNetV2, random weights on every
               side (Keras has no ImageNet weights offline here), so all runs use MobileNetV2 then

and prints frozen / fine-tune / total seconds, val and test accuracy, peak RSS and the ratios beside their
targets. With --rounds R the runs take turns, rotated each round, and the median round is reported.

    python benchmarks/bench_vs_seed_recipe.py --quick                  # smoke test, 1-3 min on 2 CPU cores
    python benchmarks/bench_vs_seed_recipe.py                          # the published numbers
    python benchmarks/bench_vs_seed_recipe.py --keras --rounds 3       # + Keras (pip install '.[bench]')
    python benchmarks/bench_vs_seed_recipe.py --rss-images 10000       # + decode/cache memory

Peak RSS is `ru_maxrss`: the process-wide high-water mark. It never goes down, so the value after a step
covers that step and every step before it; Keras and `--rss-images` run in their own processes for that reason.
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
from safetensors.torch import save_file

from transferlab.atomic import write_json_atomic
from transferlab.data.decoded import decode_images
from transferlab.data.embedded import SUBSETS, export_embedded
from transferlab.data.scan import LabelledImage
from transferlab.experiments.compare import run_compare
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.phases import unfreeze_for_finetuning
from transferlab.experiments.datasets import Split, labels_of, prepare_data, scan_folders
from transferlab.models.backbones import OFFLINE_BACKBONE, PretrainedBackbone, create_backbone, load_backbone
from transferlab.models.freezing import freeze_backbone
from transferlab.models.transfer_model import HeadConfig, TransferModel
from transferlab.training.engines import prefix_runner, torch_prefixes
from transferlab.training.inputs import ImageInputs
from transferlab.training.devices import resolve_device
from transferlab.training.loop import PhaseSpec, evaluate, train_phase
from transferlab.training.precision import MEASURE, precision_policy
from transferlab.training.prefix_cache import prefix_outputs
from transferlab.training.recipes import PRESETS, Recipe, resolve_recipe

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RECIPE = "seeds"                    # epochs, learning rates, head and unfrozen layers of seed 002
SEEDS = PRESETS[RECIPE]
EMBEDDED_PER_CLASS = 100            # images per class in each of the embedded train, val and test parts
FULL = {"image_size": SEEDS.image_size_px, "images_per_class": EMBEDDED_PER_CLASS,
        "epochs_frozen": SEEDS.frozen_epochs, "epochs_finetune": SEEDS.finetune_epochs}
QUICK = {"image_size": 64, "images_per_class": 10, "epochs_frozen": 1, "epochs_finetune": 1}
KERAS_BACKBONE = "mobilenetv2_100"  # the seeds' base; timm's MobileNetV2 has Keras' layer layout
FLOOR_BATCH_SIZE = 64               # prefix_outputs' batch size: the floor does the cache's work, minus the cache
FLOOR_PASSES = 3                    # fastest of 3 per engine: the first pays one-off kernel set-up, and a floor is a best case
WARMUP_IMAGES = 8                   # one call per engine before timing: the ONNX parity check runs on the first
RSS_IMAGE_SIZE_PX = 224
MAX_VAL_ACC_GAP = 0.01              # "val acc within 1 point" of the seed recipe done in PyTorch
TARGETS = {  # ratio: (measured is ... than, bound), or None where the ratio is information, not a goal
    "seed recipe (PyTorch) total / transferlab cold total": (">=", 5.0),
    "seed recipe (Keras) total / transferlab cold total": (">=", 10.0),
    "transferlab cold frozen / best cold floor": ("<=", 1.3),
    "transferlab cold frozen / ONNX floor without its export": None,  # the export is paid once per graph
    "ONNX floor / eager floor (img/s)": (">=", 3.0),
    "transferlab warm frozen / best floor": ("<=", 0.1),
}
RUN_LABELS = {"transferlab_cold": "transferlab, cold cache", "transferlab_warm": "transferlab, warm cache",
              "seed_torch": "seed recipe, PyTorch (base every batch)", "seed_keras": "seed recipe, Keras (own process)"}


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


def export_images(work: Path, images_per_class: int) -> dict[str, Path]:
    """The embedded train/val/test folders; the first N images per class of each when N < 100."""
    full = dict(zip(SUBSETS, export_embedded(work / "embedded")))
    if images_per_class >= EMBEDDED_PER_CLASS:
        return full
    subsets = {name: work / f"{images_per_class}_per_class" / name for name in SUBSETS}
    for name, source in full.items():
        for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
            (subsets[name] / class_dir.name).mkdir(parents=True)
            for png in sorted(class_dir.glob("*.png"))[:images_per_class]:
                shutil.copy2(png, subsets[name] / class_dir.name / png.name)
    return subsets


def random_weights_file(backbone: str, seed: int, path: Path) -> Path:
    """Random initial weights as a --weights file: every PyTorch run then starts from the same ones."""
    torch.manual_seed(seed)
    save_file(create_backbone(backbone).state_dict(), path)
    return path


def decode(cfg: CompareConfig, cache_dir: Path) -> tuple[Split, PretrainedBackbone, float]:
    """The backbone, and the scan + split + decode compare does, into `cache_dir` (timed)."""
    pretrained = load_backbone(cfg.backbone, cfg.weights, cfg.recipe.image_size_px)
    started = time.perf_counter()
    prepared = prepare_data(replace(cfg, cache_dir=cache_dir), scan_folders(cfg), pretrained.preprocessing,
                            run_dir=cache_dir)
    return prepared.split, pretrained, time.perf_counter() - started


def phase_summary(val_acc: float, test_acc: float | None, cache_seconds: float, train_seconds: float) -> dict:
    return {"val_acc": val_acc, "test_acc": test_acc, "seconds": cache_seconds + train_seconds,
            "cache_seconds": cache_seconds, "train_seconds": train_seconds}


def run_summary(decode_seconds: float, phases: dict, **extra) -> dict:
    """Total as the seeds count it: decode + frozen + fine-tune (the test pass at the end is in no total)."""
    return {"decode_seconds": decode_seconds, "phases": phases,
            "total_seconds": decode_seconds + phases["frozen"]["seconds"] + phases["finetuned"]["seconds"], **extra}


def measure_floor(cfg: CompareConfig, device: torch.device, work: Path) -> dict:
    """No-grad passes of the base over train+val on each engine, taking turns; each keeps its fastest pass."""
    split, pretrained, decode_seconds = decode(cfg, work / "cache")
    prep = pretrained.preprocessing
    model = TransferModel(pretrained.module, len(split.class_names))
    model = model.to(device, memory_format=torch.channels_last).eval()  # compare's memory format
    cuts = [len(model.units)]  # pooled features: the frozen phase's cache
    runners, export_seconds = {"eager": torch_prefixes(model, cuts, prep, device)}, None
    if device.type == "cpu":  # ONNX Runtime runs on the CPU only
        started = time.perf_counter()
        runners["onnxruntime"] = prefix_runner(model, cuts, prep, device, "onnxruntime", work / "cache",
                                               pretrained.cache_key)
        export_seconds = time.perf_counter() - started
    sources = [d.pixels for d in (split.train, split.val)]  # uint8 NHWC rows of the decode cache, as compare reads them
    batches = [(pixels, np.arange(start, min(start + FLOOR_BATCH_SIZE, len(pixels))))
               for pixels in sources for start in range(0, len(pixels), FLOOR_BATCH_SIZE)]
    for run in runners.values():
        run(torch.from_numpy(sources[0][np.arange(min(WARMUP_IMAGES, len(sources[0])))]))
    passes: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(FLOOR_PASSES):
        for name, run in runners.items():
            started = time.perf_counter()
            for pixels, positions in batches:
                for y in run(torch.from_numpy(pixels[positions])):
                    y.float().cpu()  # what prefix_outputs does before it stores a batch
            passes[name].append(time.perf_counter() - started)
    n_images = sum(len(s) for s in sources)
    engines = {name: {"seconds": min(s), "img_per_s": n_images / min(s), "passes_seconds": s}
               for name, s in passes.items()}
    best = min(engines, key=lambda name: engines[name]["seconds"])
    onnx = runners.get("onnxruntime")
    return {"images": n_images, "batch_size": FLOOR_BATCH_SIZE, "decode_seconds": decode_seconds,
            "engines": engines, "best": best, "seconds": engines[best]["seconds"],
            "onnx_export_seconds": export_seconds,  # export + session: paid once per backbone, weights, size, cuts
            "onnx_ran_on": onnx.engine if onnx else None,  # 'torch' if the parity check failed
            "onnx_max_abs_delta": onnx.max_abs_delta if onnx else None}


def compare_summary(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    phases = {name: phase_summary(p["val_acc"], p.get("test_acc"), p["cache_seconds"], p["train_seconds"])
              for name, p in results["phases"].items()}
    return run_summary(results["decode_seconds"], phases, engine=results["engine"],
                       precision=results["training_precision"])


def run_transferlab(cfg: CompareConfig, work: Path, device: torch.device) -> dict[str, dict]:
    """run_compare on a fresh cache dir (cold), then again on the same one (warm)."""
    cfg = replace(cfg, cache_dir=work / "cache", runs_dir=work / "runs")
    return {"transferlab_cold": compare_summary(run_compare(cfg)),
            "transferlab_warm": compare_summary(run_compare(cfg))}


def seed_precision(cfg: CompareConfig, device: torch.device) -> str:
    """The naive recipe runs as the seed does, in fp32, unless bf16 is asked for; compare's MEASURE (per
    phase, on CPU) is part of what transferlab does and the seed does not."""
    precision = precision_policy(cfg.precision, device)
    return "fp32" if precision == MEASURE else precision


def phase_spec(name: str, epochs: int, lr: float, cfg: CompareConfig, recipe: Recipe, device: torch.device) -> PhaseSpec:
    """What compare's runner builds for a phase (the benchmark uses no class weights)."""
    return PhaseSpec(name=name, epochs=epochs, learning_rate=lr, batch_size=cfg.batch_size, seed=cfg.seed,
                     optimization=recipe.optimization, precision=seed_precision(cfg, device))


def run_seed_torch(cfg: CompareConfig, work: Path, device: torch.device) -> dict[str, dict]:
    """The seeds' two fits through the project's own loop: only the forward and the inputs differ.

    The whole model is the forward and normalised pixels are the inputs, so the frozen base runs on every
    batch of every epoch. Autograd still stops at the first layer that trains, as Keras' tape does.
    """
    split, pretrained, decode_seconds = decode(cfg, work / "cache")
    recipe = cfg.recipe
    data = {name: (ImageInputs(d.pixels, pretrained.preprocessing, device), labels_of(d))
            for name, d in (("train", split.train), ("val", split.val), ("test", split.test))}
    torch.manual_seed(cfg.seed)  # as compare does, so both heads start from the same weights
    model = TransferModel(pretrained.module, len(split.class_names), HeadConfig(dropout=recipe.head_dropout))
    model = model.to(device, memory_format=torch.channels_last)
    phases = {}
    for name, epochs, lr in (("frozen", recipe.frozen_epochs, recipe.frozen_lr),
                             ("finetuned", recipe.finetune_epochs, recipe.finetune_lr)):
        plan = freeze_backbone(model) if name == "frozen" else unfreeze_for_finetuning(model, recipe)
        started = time.perf_counter()
        train_phase(model, model, *data["train"], *data["val"], phase_spec(f"seed {name}", epochs, lr, cfg, recipe, device),
                    [model.head, *plan.train_mode_modules], device, show_progress=cfg.show_progress)
        seconds = time.perf_counter() - started
        precision = seed_precision(cfg, device)
        val_acc, test_acc = (evaluate(model, *data[s], cfg.batch_size * 2, device, precision).accuracy
                             for s in ("val", "test"))
        phases[name] = phase_summary(val_acc, test_acc, 0.0, seconds)
    return {"seed_torch": run_summary(decode_seconds, phases)}


def run_seed_keras(cfg: CompareConfig) -> dict:
    """Seed 002's code (/work/shared/seeds), run in a fresh process; epochs and sizes from the benchmark.

    As in the seed: the model is built on base.input (no `training=False`, so the BatchNorm layers among the
    last 20 update their statistics when fine-tuned), pixels rescaled by 1/255, softmax + cross-entropy,
    Adam() then Adam(1e-5), the last epoch kept. Two changes: weights=None (no ImageNet weights offline
    here) and the benchmark's explicit train/val/test folders instead of validation_split.
    """
    import tensorflow as tf

    recipe = cfg.recipe
    n_layers = recipe.unfreeze.count  # keras:20
    tf.keras.utils.set_random_seed(cfg.seed)
    size = (recipe.image_size_px, recipe.image_size_px)
    started = time.perf_counter()
    data = {name: tf.keras.utils.image_dataset_from_directory(
        folder, image_size=size, batch_size=cfg.batch_size, color_mode="rgb", label_mode="categorical",
        shuffle=name == "train", seed=cfg.seed).map(lambda x, y: (x / 255.0, y))
        for name, folder in (("train", cfg.train_dir), ("val", cfg.val_dir), ("test", cfg.test_dir))}
    base = tf.keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(*size, 3))
    base.trainable = False
    x = tf.keras.layers.GlobalAveragePooling2D()(base.output)
    x = tf.keras.layers.Dense(128, activation="relu")(x)
    n_classes = len([p for p in Path(cfg.train_dir).iterdir() if p.is_dir()])
    model = tf.keras.Model(inputs=base.input, outputs=tf.keras.layers.Dense(n_classes, activation="softmax")(x))
    setup_seconds = time.perf_counter() - started
    phases = {}
    for name, epochs, lr in (("frozen", recipe.frozen_epochs, recipe.frozen_lr),
                             ("finetuned", recipe.finetune_epochs, recipe.finetune_lr)):
        if name == "finetuned":
            base.trainable = True
            for layer in base.layers[:-n_layers]:
                layer.trainable = False
        model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="categorical_crossentropy", metrics=["accuracy"])
        started = time.perf_counter()
        model.fit(data["train"], validation_data=data["val"], epochs=epochs, verbose=0)
        seconds = time.perf_counter() - started
        val_acc, test_acc = (float(model.evaluate(data[s], verbose=0)[1]) for s in ("val", "test"))
        phases[name] = phase_summary(val_acc, test_acc, 0.0, seconds)
    # Keras decodes inside fit, every epoch; its "decode" is the datasets' and the model's set-up
    return {"seed_keras": run_summary(setup_seconds, phases, tensorflow=tf.__version__,
                                      peak_rss_mib=own_peak_rss_mib())}


def in_fresh_process(fn, *args):
    """Spawned, not forked: no copy of our tensors, and its own VmHWM (see own_peak_rss_mib)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run_keras_in_fresh_process(cfg: CompareConfig, work: Path, device: torch.device) -> dict[str, dict]:
    return in_fresh_process(run_seed_keras, cfg)


def measure_decode_and_cache_rss(n_images: int, cfg: CompareConfig) -> dict:
    """Peak RSS of decoding N noise images and caching their pooled features (run in its own process)."""
    device = resolve_device(cfg.device)
    with tempfile.TemporaryDirectory(prefix="transferlab-rss-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        rng = np.random.default_rng(cfg.seed)
        images = []
        for i in range(n_images):
            path = folder / f"noise_{i:06d}.png"
            Image.fromarray(rng.integers(0, 256, (RSS_IMAGE_SIZE_PX, RSS_IMAGE_SIZE_PX, 3), np.uint8)).save(path)
            images.append(LabelledImage(path, 0))
        pretrained = load_backbone(cfg.backbone, cfg.weights, RSS_IMAGE_SIZE_PX)
        prep = pretrained.preprocessing
        model = TransferModel(pretrained.module, 2).to(device, memory_format=torch.channels_last)
        freeze_backbone(model)
        rss = {"after_model_mib": own_peak_rss_mib()}
        started = time.perf_counter()
        decoded = decode_images(images, prep, Path(tmp) / "cache", show_progress=False)
        decode_seconds = time.perf_counter() - started
        rss["after_decode_mib"] = own_peak_rss_mib()
        started = time.perf_counter()
        prefix_outputs(model, [len(model.units)], decoded.pixels, decoded.content_keys, prep, Path(tmp) / "cache",
                       pretrained.cache_key, device, engine=cfg.engine, show_progress=False)
        cache_seconds = time.perf_counter() - started
        rss["after_cache_mib"] = own_peak_rss_mib()
    return {"images": n_images, "image_size_px": RSS_IMAGE_SIZE_PX,
            "decoded_pixels_mib": n_images * RSS_IMAGE_SIZE_PX ** 2 * 3 / 2**20,
            "decode_seconds": decode_seconds, "cache_seconds": cache_seconds, "peak_rss": rss}


def run_rounds(contenders: dict, rounds: int, cfg: CompareConfig, work: Path, device: torch.device,
               rss: dict) -> dict[str, list[dict]]:
    """Each round runs every contender once, the order rotated, so load from elsewhere hits all alike.

    Every run gets a fresh work dir: a cold cache is cold in every round.
    """
    names = list(contenders)
    runs: dict[str, list[dict]] = {}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            print(f"round {r + 1}/{rounds}: {name} ...", flush=True)
            for key, result in contenders[name](cfg, work / f"round{r + 1}" / name, device).items():
                runs.setdefault(key, []).append(result)
                rss[key] = result.get("peak_rss_mib", peak_rss_mib())
    return runs


def median_run(rounds: list[dict]) -> dict:
    """The round with the median total (the upper one for an even count)."""
    return sorted(rounds, key=lambda run: run["total_seconds"])[len(rounds) // 2]


def against_target(name: str, measured: float, also_required: bool = True) -> dict:
    if TARGETS[name] is None:
        return {"measured": measured, "target": None, "met": None}
    op, bound = TARGETS[name]
    met = (measured <= bound if op == "<=" else measured >= bound) and also_required
    return {"measured": measured, "target": f"{op} {bound:g}", "met": met}


def ratios_of(report: dict) -> dict:
    floor, cold, warm = report["floor"], report["transferlab_cold"], report["transferlab_warm"]
    ratios = {}
    for key, name in (("seed_torch", "seed recipe (PyTorch) total / transferlab cold total"),
                      ("seed_keras", "seed recipe (Keras) total / transferlab cold total")):
        if report.get(key):
            gap = report[key]["phases"]["finetuned"]["val_acc"] - cold["phases"]["finetuned"]["val_acc"]
            # the PyTorch side runs the same model from the same weights, so its accuracy must match;
            # Keras' own initialisation and kernels make its gap information only
            gated = key == "seed_torch"
            ratios[name] = {**against_target(name, report[key]["total_seconds"] / cold["total_seconds"],
                                             not gated or abs(gap) <= MAX_VAL_ACC_GAP),
                            "val_acc_gap": gap, "val_acc_gap_gated": gated}
    # a cold run must pay for a graph before ONNX Runtime can run it: its floor is the cheaper of an eager
    # pass and export + ONNX pass; a warm run finds the graph and the features cached
    cold_floor = floor["seconds"]
    measured = {}
    if "onnxruntime" in floor["engines"]:
        onnx, eager = floor["engines"]["onnxruntime"], floor["engines"]["eager"]
        cold_floor = min(eager["seconds"], onnx["seconds"] + floor["onnx_export_seconds"])
        measured["transferlab cold frozen / ONNX floor without its export"] = (
            cold["phases"]["frozen"]["seconds"] / onnx["seconds"])
        measured["ONNX floor / eager floor (img/s)"] = onnx["img_per_s"] / eager["img_per_s"]
    measured = {"transferlab cold frozen / best cold floor": cold["phases"]["frozen"]["seconds"] / cold_floor} | measured
    measured["transferlab warm frozen / best floor"] = warm["phases"]["frozen"]["seconds"] / floor["seconds"]
    return ratios | {name: against_target(name, value) for name, value in measured.items()}


def markdown_tables(report: dict) -> str:
    def row(*cells) -> str:
        return "| " + " | ".join(cells) + " |"

    def num(v, fmt=".2f") -> str:
        return "" if v is None else format(v, fmt)

    floor, rss = report["floor"], report["peak_rss_mib_after"]
    lines = [row(f"floor: one pass over {floor['images']} train+val images", "seconds", "img/s"),
             row("---", "---:", "---:")]
    labels = {"eager": "PyTorch eager, channels_last",
              "onnxruntime": f"ONNX Runtime (export {num(floor['onnx_export_seconds'], '.1f')} s, once, apart)"}
    for name, engine in floor["engines"].items():
        lines.append(row(labels[name], num(engine["seconds"]), num(engine["img_per_s"], ".1f")))
    lines.append(row(f"**best**: {floor['best']}", num(floor["seconds"]), ""))
    lines += ["", row("run", "frozen s", "fine-tune s", "decode s", "total s", "val acc", "test acc",
                      "peak RSS MiB*"),
              row("---", *["---:"] * 7)]
    for key, label in RUN_LABELS.items():
        run = report.get(key)
        if run:
            finetuned = run["phases"]["finetuned"]
            lines.append(row(label, num(run["phases"]["frozen"]["seconds"]), num(finetuned["seconds"]),
                             num(run["decode_seconds"]), num(run["total_seconds"]), num(finetuned["val_acc"], ".3f"),
                             num(finetuned["test_acc"], ".3f"), num(rss.get(key), ".0f")))
    lines += ["", "\\* `ru_maxrss` of this process after the run, so it includes every run before it "
                  "(Keras: its own process). Accuracies are the fine-tuned phase's.", "",
              row("ratio", "measured", "target", "met"), row("---", "---:", "---", "---")]
    for name, r in report["ratios"].items():
        target = r["target"] or ""
        if "val_acc_gap" in r:
            target += f", val acc gap {r['val_acc_gap']:+.3f}" + (f" within ±{MAX_VAL_ACC_GAP}" if r["val_acc_gap_gated"]
                                                                  else " (information)")
        met = "" if r["met"] is None else "yes" if r["met"] else "**no**"
        lines.append(row(name, f"{r['measured']:.2f}x", target, met))
    if report.get("rss_images"):
        r = report["rss_images"]
        peaks = ", ".join(f"{k.removesuffix('_mib').replace('_', ' ')} {v:.0f} MiB" for k, v in r["peak_rss"].items())
        lines += ["", f"decode + feature cache of {r['images']} noise images at {r['image_size_px']} px, own process "
                      f"(decoded pixels {r['decoded_pixels_mib']:.0f} MiB): peak RSS {peaks}; "
                      f"decode {r['decode_seconds']:.1f} s, cache {r['cache_seconds']:.1f} s"]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default=OFFLINE_BACKBONE,
                   help=f"timm name (default: %(default)s, offline weights; --keras: {KERAS_BACKBONE}, random weights)")
    p.add_argument("--image-size", type=int, help=f"pixels (default {FULL['image_size']}, the seeds')")
    p.add_argument("--images-per-class", type=int,
                   help=f"images per class in each of train, val and test, 1..{EMBEDDED_PER_CLASS} (default all)")
    p.add_argument("--epochs-frozen", type=int, help=f"default {FULL['epochs_frozen']}, the seeds'")
    p.add_argument("--epochs-finetune", type=int, help=f"default {FULL['epochs_finetune']}, the seeds'")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    p.add_argument("--rounds", type=int, default=1, help="runs take turns this many times (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="every side (default %(default)s: Keras' default, which the seeds used)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice); recorded either way")
    p.add_argument("--keras", action="store_true",
                   help=f"also run seed 002 in Keras (needs tensorflow-cpu: pip install '.[bench]'); every run "
                        f"then uses {KERAS_BACKBONE} with random weights")
    p.add_argument("--rss-images", type=int, default=0, metavar="N",
                   help=f"also measure peak RSS of decoding + caching N noise images at {RSS_IMAGE_SIZE_PX} px, "
                        "in a separate process (default 0: skip)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/vs_seed_recipe_<settings>.json)")
    return p


def main(args: argparse.Namespace) -> dict:
    settings = {k: getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else FULL)[k]
                for k in FULL}
    if not 1 <= settings["images_per_class"] <= EMBEDDED_PER_CLASS:
        raise SystemExit(f"--images-per-class must be 1..{EMBEDDED_PER_CLASS} (got {settings['images_per_class']})")
    if args.keras and importlib.util.find_spec("tensorflow") is None:
        raise SystemExit("--keras needs TensorFlow: pip install '.[bench]' (tensorflow-cpu), or leave out --keras")
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be 1 or more (got {args.rounds})")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    backbone = KERAS_BACKBONE if args.keras else args.backbone
    out = args.out or RESULTS_DIR / (f"vs_seed_recipe_{backbone}_{settings['image_size']}px_"
                                     f"{settings['images_per_class']}pc{'_keras' if args.keras else ''}"
                                     f"{'_quick' if args.quick else ''}.json")
    environment = {"device": str(device), "torch": torch.__version__, "timm": timm.__version__,
                   "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                   "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    report: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": settings,
                    "environment": environment, "peak_rss_mib_after": {"start": peak_rss_mib()}}
    rss = report["peak_rss_mib_after"]

    with tempfile.TemporaryDirectory(prefix="transferlab-bench-") as tmp:
        work = Path(tmp)
        folders = export_images(work, settings["images_per_class"])
        weights = random_weights_file(backbone, args.seed, work / "random.safetensors") if args.keras else None
        cfg = CompareConfig(train_dir=folders["train"], val_dir=folders["val"], test_dir=folders["test"],
                            backbone=backbone, weights=weights, recipe=resolve_recipe(RECIPE, {
                                "image_size_px": settings["image_size"], "frozen_epochs": settings["epochs_frozen"],
                                "finetune_epochs": settings["epochs_finetune"]}),
                            skip_scratch=True, batch_size=args.batch_size, seed=args.seed, device=args.device,
                            engine="auto", name="bench", show_progress=args.progress)
        recipe = cfg.recipe
        report["recipe"] = {"batch_size": cfg.batch_size, "weights": "random" if weights else "pretrained",
                            **recipe.to_dict()}

        print(f"floor: {FLOOR_PASSES} passes of {backbone} over train+val per engine ...", flush=True)
        report["floor"] = measure_floor(cfg, device, work / "floor")
        rss["floor"] = peak_rss_mib()

        contenders = {"transferlab": run_transferlab, "seed-torch": run_seed_torch}
        if args.keras:
            contenders["seed-keras"] = run_keras_in_fresh_process
        report["rounds"] = run_rounds(contenders, args.rounds, cfg, work, device, rss)
        report.update({key: median_run(rounds) for key, rounds in report["rounds"].items()})
        report["data"] = {name: sum(1 for _ in folder.rglob("*.png")) for name, folder in folders.items()}
        report["ratios"] = ratios_of(report)

        if args.rss_images:
            print(f"decode + cache RSS of {args.rss_images} noise images, in its own process ...", flush=True)
            report["rss_images"] = in_fresh_process(measure_decode_and_cache_rss, args.rss_images, cfg)

    report["notes"] = [
        "peak RSS is ru_maxrss of this process: monotone, so each value includes everything run before it",
        "floor, each transferlab cold run and each seed run decode into their own fresh cache dirs",
        "transferlab's cold frozen phase includes its ONNX export; its phases include per-epoch checkpoints",
        "totals are decode + frozen + fine-tune; the test pass at the end is in no total",
        f"recipe '{RECIPE}' on every side: the last epoch is kept, val and test accuracy of the fine-tuned phase",
    ]
    print()
    print(f"{backbone} ({report['recipe']['weights']} weights) at {settings['image_size']} px, "
          f"{settings['images_per_class']} images per class in each of train/val/test, recipe {RECIPE}: epochs "
          f"{recipe.frozen_epochs} frozen + {recipe.finetune_epochs} fine-tune, unfreeze {recipe.unfreeze}, batch "
          f"{cfg.batch_size}, lr {recipe.frozen_lr:g} / {recipe.finetune_lr:g}; {device}, torch threads "
          f"{torch.get_num_threads()}, {args.rounds} round(s), median shown")
    print()
    print(markdown_tables(report))
    if args.quick:
        print("\n--quick checks that everything runs; with one epoch per phase its ratios say nothing.")
    write_json_atomic(out, report)
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
