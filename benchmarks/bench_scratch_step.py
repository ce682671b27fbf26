"""How close is the scratch phase's training step to this CPU's limit? One full step (forward, loss, backward,
AdamW) of the scratch network at its real shape, the paths alternated round by round in one process:

- eager fp32 (contiguous and channels_last), eager bf16 autocast (channels_last: what a scratch phase runs
  on a CPU with native bf16, chosen by the precision probe), torch.compile (inductor) of both,
- and the arithmetic floor: the step's FLOPs (3 × the forward's, torch.utils.flop_counter) over the CPU's
  measured peak (a large matmul in fp32 and in bf16).

    python benchmarks/bench_scratch_step.py                  # Lite0, 224 px, batch 32, 5 classes
    python benchmarks/bench_scratch_step.py --image-size 64 --no-compile
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from transferlab.atomic import write_json_atomic
from transferlab.models.backbones import create_backbone
from transferlab.models.transfer_model import HeadConfig, TransferModel


def scratch_model(backbone: str, n_classes: int, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = TransferModel(create_backbone(backbone), n_classes, HeadConfig(dropout=0.3)).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def step_function(model: torch.nn.Module, bf16: bool, compiled: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
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
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per path and round")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scratch_step.json")
    args = parser.parse_args()

    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, args.classes, (args.batch_size,))
    paths = {"eager fp32": (False, False, False), "eager fp32 channels_last": (True, False, False),
             "eager bf16 channels_last (today)": (True, True, False)}
    if args.compile:
        paths |= {"compiled fp32 channels_last": (True, False, True),
                  "compiled bf16 channels_last": (True, True, True)}
    steps, inputs, warmup = {}, {}, {}
    for name, (channels_last, bf16, compiled) in paths.items():
        model = scratch_model(args.backbone, args.classes, channels_last)
        steps[name] = step_function(model, bf16, compiled)
        inputs[name] = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        warmup[name] = _timed(lambda: [steps[name](inputs[name], y) for _ in range(2)])  # compiles, if it does
        print(f"{name}: warm-up (2 steps{', compile' if compiled else ''}) {warmup[name]:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):  # alternate: a slow minute of the machine hits every path alike
        for name in paths:
            times[name] += [_timed(lambda: steps[name](inputs[name], y)) for _ in range(args.steps)]

    model = scratch_model(args.backbone, args.classes, False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    # backward costs about twice the forward (the gradients of inputs and of weights); counted directly,
    # torch's flop counter gives grouped (depthwise) convolutions' backward as if they were dense
    flops = 3 * counter.get_total_flops()
    peaks = {"fp32": peak_flops(torch.float32), "bf16": peak_flops(torch.bfloat16)}
    today = statistics.median(times["eager bf16 channels_last (today)"])
    rows = [{"path": name, "median_s": statistics.median(t), "min_s": min(t),
             "speedup_vs_today": today / statistics.median(t), "warmup_s": warmup[name]} for name, t in times.items()]
    rows += [{"path": f"arithmetic floor ({dtype} peak {peak / 1e9:.0f} GFLOP/s)", "median_s": flops / peak,
              "min_s": flops / peak, "speedup_vs_today": today / (flops / peak), "warmup_s": 0.0}
             for dtype, peak in peaks.items()]
    print(f"\n{args.backbone}, {args.image_size} px, batch {args.batch_size}, {torch.get_num_threads()} threads; "
          f"{flops / 1e9:.1f} GFLOP per step (forward + backward)")
    print("| path | s / step (median) | vs today |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['path']} | {r['median_s']:.2f} | {r['speedup_vs_today']:.2f}× |")
    write_json_atomic(args.out, {"command": " ".join(sys.argv), "backbone": args.backbone,
                                 "image_size_px": args.image_size, "batch_size": args.batch_size,
                                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                                 "cpu": platform.processor() or platform.machine(), "gflop_per_step": flops / 1e9,
                                 "peak_gflops": {k: v / 1e9 for k, v in peaks.items()}, "rows": rows,
                                 "step_seconds": times})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
