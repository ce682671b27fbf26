"""What deploying a model costs on this machine: parameters, fp32 size, and latency per image."""

import copy
import logging

import torch

from transferlab.models.backbones import PretrainedBackbone
from transferlab.models.transfer_model import TransferModel

TIMED_RUNS = 3  # a fixed count, after the Timer's own warm-up: a study times many backbones on a CPU


def _benchmark_timer() -> type:
    """torch.utils.benchmark's Timer, imported when a backbone is timed, with torch's cpp_extension logger quiet.

    Its import pulls in torch.utils.cpp_extension, which logs "No CUDA runtime is found" on any machine with a
    CUDA toolkit and no GPU: a line on every study's stderr that says nothing about the study.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        logger.setLevel(level)
    return Timer


@torch.no_grad()
def measure_inference(pretrained: PretrainedBackbone, n_classes: int, device: torch.device) -> dict:
    """Parameters, fp32 size and per-image latency of the whole model (backbone and head) at batch 1 and 32.

    torch.utils.benchmark synchronises CUDA around the timed runs; it would also drop to one thread unless
    told otherwise, and the latency that matters is the one the process runs with.
    """
    model = TransferModel(copy.deepcopy(pretrained.module), n_classes).to(device).eval()
    size = pretrained.preprocessing.image_size_px
    latency = {}
    Timer = _benchmark_timer()  # noqa: N806
    for batch in (1, 32):
        timer = Timer("model(x)", globals={"model": model, "x": torch.zeros(batch, 3, size, size, device=device)},
                      num_threads=torch.get_num_threads())
        latency[f"batch_{batch}"] = timer.timeit(TIMED_RUNS).median / batch * 1000
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "size_mb": sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20,
            "latency_ms_per_image": latency}
