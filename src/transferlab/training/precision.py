"""What training and evaluation forwards compute in: `--precision` and, on a CPU, the measured choice.

auto: bf16 autocast on GPUs that have it; on a CPU with native bf16 each phase times itself in fp32 and
bf16 and keeps the faster; else fp32.

Measured on this project's 2-core AVX-512 BF16 CPU, bf16 autocast made the seeds' MobileNetV2 fine-tune
tail at 224 px 1.5x faster, the default recipe's EfficientNet-Lite0 tail no faster, and a scratch Lite0 at
96 px slower (0.82x); test accuracy did not move beyond the spread. No rule of thumb predicts that, so a
phase times forward + backward of its own module on its own first batch in both precisions (weights, BatchNorm
statistics and the random state put back afterwards) and takes bf16 only when it is clearly faster. As
cuDNN's autotuner does, the choice is kept per machine and phase shape, in the user's cache, so every later
run of the same shapes skips the probe and chooses alike; a resumed phase keeps the precision its first
epochs ran in.
CPUs without native bf16 never probe: emulated bf16 is slower.
"""

import functools
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from transferlab.atomic import write_json_atomic
from transferlab.data.fingerprints import key_digest
from transferlab.errors import UserError
from transferlab.options import PRECISIONS
from transferlab.models.freezing import set_train_mode
from transferlab.training.inputs import Inputs

MEASURE = "measure"  # what precision_policy answers where each phase measures fp32 against bf16
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # without them CPU autocast emulates bf16

BF16_MIN_SPEEDUP = 1.15  # below this the numerics change for too little: fp32
PROBE_SECONDS = 0.5      # timed per precision, alternating step by step, after one untimed step each: a
PROBE_MIN_STEPS = 3      # tiny step is timed dozens of times, so one preempted step cannot flip the median
PROBE_MAX_STEPS = 64
CPU = torch.device("cpu")


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags from /proc/cpuinfo ('unknown' and none where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    values = lambda key: [line.split(":", 1)[1] for line in lines if line.split(":")[0].strip() == key]  # noqa: E731
    names = values("model name")
    return (names[0].strip() if names else "unknown",
            frozenset(flag for flags in values("flags") for flag in flags.split()))


def cpu_has_native_bf16() -> bool:
    return bool(BF16_CPU_FLAGS & cpu_info()[1])


def precision_policy(precision: str, device: torch.device) -> str:
    """What the forwards run in: 'bf16' (autocast), 'fp32', or MEASURE (each phase times both on this CPU)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision '{precision}' is unknown; choose one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError("--precision bf16: this GPU has no bf16; use --precision fp32 or auto")
        return "bf16" if precision == "auto" and torch.cuda.is_bf16_supported() else precision.replace("auto", "fp32")
    if precision == "auto":
        return MEASURE if cpu_has_native_bf16() else "fp32"
    return precision


def check_precision(precision: str, device: torch.device) -> None:
    """--precision checked once, where a command starts: refused in one line, or said once when bf16 is emulated."""
    if precision_policy(precision, device) == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("--precision bf16: this CPU has no AVX-512 BF16 or AMX, so bf16 is emulated and slower than "
                      "fp32", stacklevel=2)


def autocast(device: torch.device, precision: str):
    """The context every training and evaluation forward runs in: bf16 autocast or nothing."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def prefix_autocast(device: torch.device):
    """The frozen pass fills caches shared by many runs: bf16 on GPUs (its own cache keys), fp32 on CPU,
    where ONNX Runtime computes it in fp32 anyway and an exact cache serves both engines' checks."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=device.type == "cuda" and torch.cuda.is_bf16_supported())


def measure_cpu_precision(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], inputs: Inputs,
                         labels: np.ndarray, batch_size: int, train_modules: list[nn.Module],
                         machine_dir: Path) -> dict:
    """{"precision": "fp32" | "bf16", "step_seconds": {...}, ...}, measured once per machine and shape.

    The choice lives in `machine_dir` (the user's cache, whatever --cache-dir says) and is made under a lock:
    a choice is part of what a run computes, so every later or concurrent run on this machine makes the
    same one, and same seed, same data still give the same numbers.
    """
    positions = np.arange(min(batch_size, len(inputs)))
    x = inputs.batch(positions, epoch=0)
    trainable = [(name, list(p.shape)) for name, p in module.named_parameters() if p.requires_grad]
    key = key_digest("cpu-precision-v2", cpu_info()[0], sorted(cpu_info()[1] & BF16_CPU_FLAGS), torch.__version__,
                     torch.get_num_threads(), type(module).__name__, sum(p.numel() for p in module.parameters()),
                     trainable, list(x.shape), str(x.dtype), len(train_modules))
    path = Path(machine_dir) / "precision" / f"{key}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path.with_suffix(".lock"))
        lock.acquire()
    except OSError:  # a read-only home: measured here, and again next time
        lock = None
    try:
        cached = _read_choice(path)
        if cached is not None:
            return cached
        target = torch.as_tensor(labels[positions], dtype=torch.long)
        seconds = step_seconds(module, forward, x, target, train_modules)
        choice = {"precision": "bf16" if seconds["fp32"] >= BF16_MIN_SPEEDUP * seconds["bf16"] else "fp32",
                  "step_seconds": seconds, "batch_shape": list(x.shape), "min_speedup": BF16_MIN_SPEEDUP}
        try:
            write_json_atomic(path, choice)
        except OSError:
            pass
        return choice
    finally:
        if lock is not None:
            lock.release()


def _read_choice(path: Path) -> dict | None:
    """A stored choice, or None if there is none or it is unreadable or foreign (then it is measured again)."""
    try:
        cached = json.loads(path.read_text())
        if cached["precision"] in ("fp32", "bf16") and set(cached["step_seconds"]) == {"fp32", "bf16"}:
            return cached
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


def step_seconds(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 target: torch.Tensor, train_modules: list[nn.Module]) -> dict[str, float]:
    """Median forward + backward per precision, taking turns; the module is left as it was found."""
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    was_training = {m: m.training for m in module.modules()}
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.random.fork_rng(devices=[]):  # dropout draws here must not shift the run's random stream
        set_train_mode(module, train_modules)
        for step in range(PROBE_MAX_STEPS + 1):
            for precision in times:
                started = time.perf_counter()
                with autocast(CPU, precision):
                    loss = nn.functional.cross_entropy(forward(x).float(), target)
                loss.backward()
                if step > 0:  # the first step of each pays one-off kernel selection
                    times[precision].append(time.perf_counter() - started)
                module.zero_grad(set_to_none=True)
            if step >= PROBE_MIN_STEPS and min(sum(t) for t in times.values()) >= PROBE_SECONDS:
                break
    module.load_state_dict(saved)  # BatchNorm in train mode moved its statistics
    for m, training in was_training.items():
        m.train(training)
    return {precision: statistics.median(t) for precision, t in times.items()}
