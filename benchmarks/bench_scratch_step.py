"""How close is a training step to this CPU's limit? One full step (forward, loss, backward, AdamW) at its
real shape, the paths alternated round by round in one process, of the scratch network (`--part scratch`)
or of the default recipe's fine-tune tail (`--part tail`: the last 5 blocks and the head, from the cached
activations at the cut, BatchNorm frozen, as compare's fine-tune and final-fit phases train it):

- eager fp32 (contiguous and channels_last), eager bf16 autocast (channels_last), torch.compile (inductor)
  of both; on a CPU with native bf16 the precision probe of each phase picks fp32 or bf16 (channels_last),
- and the arithmetic floor: the step's FLOPs (3 × the forward's, torch.utils.flop_counter) over the CPU's
  measured peak (a large matmul in fp32 and in bf16).

    python benchmarks/bench_scratch_step.py                  # Lite0, 224 px, batch 32, 5 classes
    python benchmarks/bench_scratch_step.py --image-size 64 --no-compile
    python benchmarks/bench_scratch_step.py --part tail      # the fine-tune tail: JSON results/tail_step.json
"""

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from transferlab.atomic import write_json_atomic
from transferlab.experiments.phases import unfreeze_for_finetuning
from transferlab.models.backbones import create_backbone
from transferlab.models.freezing import freeze_backbone, set_train_mode
from transferlab.models.transfer_model import HeadConfig, TransferModel
from transferlab.training.distributed import PhaseForward
from transferlab.training.precision import cpu_has_native_bf16, cpu_info
from transferlab.training.recipes import PRESETS


# what each part runs in on a CPU with native bf16: the precision probe's choice there (scratch: bf16 in the
# runs of 2026-12-03; the tail: fp32, bf16 being slower, README "Precision"); elsewhere fp32, and bf16 (emulated,
# 100x slower for a matmul on an AVX2 EPYC) is not measured
TODAY = {"scratch": "eager bf16 channels_last", "tail": "eager fp32 channels_last"}


def step_network(part: str, backbone: str, n_classes: int, image_size: int, batch_size: int,
                 channels_last: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    """What `part`'s step trains, as a module of its input, and an input batch of its real shape. Random
    weights: a step's time does not depend on their values."""
    torch.manual_seed(0)
    model = TransferModel(create_backbone(backbone), n_classes, HeadConfig(dropout=0.3)).train()
    model = model.to(memory_format=torch.channels_last) if channels_last else model
    image = torch.randn(batch_size, 3, image_size, image_size)
    if part == "scratch":
        return model, image
    freeze_backbone(model)
    plan = unfreeze_for_finetuning(model, PRESETS["default"])
    set_train_mode(model, [model.head, *plan.train_mode_modules])
    with torch.no_grad():
        activations = torch.randn_like(model.prefix(image, plan.first_trainable_unit))
    return PhaseForward(model, functools.partial(model.forward_from, plan.first_trainable_unit)), activations


def step_function(model: torch.nn.Module, bf16: bool, compiled: bool):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    forward = torch.compile(model) if compiled else model

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def peak_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("scratch", "tail"), default="scratch")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per path and round")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, help="default: results/scratch_step.json or results/tail_step.json")
    args = parser.parse_args()
    out = args.out or Path(__file__).parent / "results" / f"{args.part}_step.json"

    network = functools.partial(step_network, args.part, args.backbone, args.classes, args.image_size,
                                args.batch_size)
    y = torch.randint(0, args.classes, (args.batch_size,))
    native_bf16 = cpu_has_native_bf16()
    paths = {"eager fp32": (False, False, False), "eager fp32 channels_last": (True, False, False),
             "eager bf16 channels_last": (True, True, False), "compiled fp32 channels_last": (True, False, True),
             "compiled bf16 channels_last": (True, True, True)}
    paths = {name: path for name, path in paths.items()
             if (native_bf16 or not path[1]) and (args.compile or not path[2])}
    runs_today = TODAY[args.part] if native_bf16 else "eager fp32 channels_last"
    today = f"{runs_today} (today)"
    paths = {today if name == runs_today else name: path for name, path in paths.items()}
    steps, inputs, warmup = {}, {}, {}
    for name, (channels_last, bf16, compiled) in paths.items():
        model, x = network(channels_last)
        steps[name] = step_function(model, bf16, compiled)
        inputs[name] = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        warmup[name] = _timed(lambda: [steps[name](inputs[name], y) for _ in range(2)])  # compiles, if it does
        print(f"{name}: warm-up (2 steps{', compile' if compiled else ''}) {warmup[name]:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):  # alternate: a slow minute of the machine hits every path alike
        for name in paths:
            times[name] += [_timed(lambda: steps[name](inputs[name], y)) for _ in range(args.steps)]

    model, x = network(False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    # backward costs about twice the forward (the gradients of inputs and of weights); counted directly,
    # torch's flop counter gives grouped (depthwise) convolutions' backward as if they were dense. The tail
    # computes no gradient of its input (cached activations) nor of its frozen BatchNorm, so 3x slightly
    # overstates its step and its floor
    flops = 3 * counter.get_total_flops()
    peaks = {"fp32": peak_flops(torch.float32)} | ({"bf16": peak_flops(torch.bfloat16)} if native_bf16 else {})
    today_s = statistics.median(times[today])
    rows = [{"path": name, "median_s": statistics.median(t), "min_s": min(t),
             "speedup_vs_today": today_s / statistics.median(t), "warmup_s": warmup[name]}
            for name, t in times.items()]
    rows += [{"path": f"arithmetic floor ({dtype} peak {peak / 1e9:.0f} GFLOP/s)", "median_s": flops / peak,
              "min_s": flops / peak, "speedup_vs_today": today_s / (flops / peak), "warmup_s": 0.0}
             for dtype, peak in peaks.items()]
    print(f"\n{args.part}: {args.backbone}, {args.image_size} px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads; {flops / 1e9:.1f} GFLOP per step (forward + backward)")
    print("| path | s / step (median) | vs today |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['path']} | {r['median_s']:.2f} | {r['speedup_vs_today']:.2f}× |")
    write_json_atomic(out, {"command": " ".join(sys.argv), "part": args.part, "input_shape": list(x.shape[1:]),
                            "backbone": args.backbone, "image_size_px": args.image_size,
                            "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                            "torch": torch.__version__, "cpu": cpu_info()[0], "native_bf16": native_bf16,
                            "gflop_per_step": flops / 1e9, "peak_gflops": {k: v / 1e9 for k, v in peaks.items()},
                            "rows": rows, "step_seconds": times})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
