"""measure_inference on a tiny timm model: what it reports, and that it runs the model as documented."""

import copy
import math
import os
import subprocess
import sys

import torch

from transferlab.data.images import Preprocessing
from transferlab.models.backbones import PretrainedBackbone, create_backbone
from transferlab.models.inference_cost import TIMED_RUNS, measure_inference
from transferlab.models.transfer_model import TransferModel
from transferlab.models.weights import WeightsSource

WARM_UP_RUNS = 2  # torch.utils.benchmark.Timer.timeit warms up with max(number // 100, 2) runs


def test_size_and_latency_of_the_whole_model_timed_at_the_process_thread_count():
    backbone = create_backbone("test_efficientnet")
    pretrained = PretrainedBackbone("test_efficientnet", backbone, WeightsSource("random", "", "random"),
                                    preprocessing=Preprocessing(32, (0.5,) * 3, (0.5,) * 3), notice=None)
    calls = []  # (batch, threads) of every forward, from the stem; the hook travels with the deep copy
    backbone.conv_stem.register_forward_hook(lambda m, args, out: calls.append((len(args[0]), torch.get_num_threads())))
    threads = torch.get_num_threads()
    reference = TransferModel(copy.deepcopy(backbone), 3)  # building the model probes the backbone too
    building, calls[:] = list(calls), []
    cost = measure_inference(pretrained, n_classes=3, device=torch.device("cpu"))

    assert cost["parameters"] == sum(p.numel() for p in reference.parameters()) > sum(
        p.numel() for p in backbone.parameters())  # the head counts too
    assert cost["size_mb"] == cost["parameters"] * 4 / 2**20 + sum(  # fp32 weights plus BatchNorm buffers
        b.numel() * b.element_size() for b in reference.buffers()) / 2**20
    assert set(cost["latency_ms_per_image"]) == {"batch_1", "batch_32"}
    assert all(math.isfinite(ms) and ms > 0 for ms in cost["latency_ms_per_image"].values())
    runs = WARM_UP_RUNS + TIMED_RUNS
    assert calls == building + [(1, threads)] * runs + [(32, threads)] * runs
    assert torch.get_num_threads() == threads


def test_no_cuda_runtime_line_on_stderr_from_a_study_or_a_timing(tmp_path):
    """A CUDA toolkit without a GPU (CUDA_HOME set) made torch log "No CUDA runtime is found" on every study."""
    code = ("import torch; import transferlab.cli; import transferlab.experiments.study;"
            "from transferlab.models.inference_cost import _benchmark_timer; _benchmark_timer();"
            "import sys; assert 'torch.utils.cpp_extension' in sys.modules")
    env = {**os.environ, "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "CUDA" not in done.stderr, done.stderr
