"""The frozen prefix on ONNX Runtime: same outputs as PyTorch on real images, exported once, safe fallbacks."""

import copy
import warnings

import numpy as np
import pytest
import torch

from transferlab.data.decoded import decode_images
from transferlab.data.scan import scan_image_folder
from transferlab.errors import UserError
from transferlab.models import onnx_export
from transferlab.models.backbones import load_backbone
from transferlab.models.transfer_model import TransferModel
from transferlab.training.engines import prefix_runner, resolve_engine
from transferlab.training.inputs import normalise

CPU = torch.device("cpu")
IMAGE_SIZE_PX = 64


@pytest.fixture(scope="module")
def lite0(small_data, tmp_path_factory):
    """EfficientNet-Lite0 (offline ImageNet weights), the small_data images as one uint8 NHWC batch."""
    pretrained = load_backbone("tf_efficientnet_lite0", None, IMAGE_SIZE_PX)
    torch.manual_seed(0)
    model = TransferModel(pretrained.module, n_classes=5).eval()
    prep = pretrained.preprocessing
    decoded = decode_images(list(scan_image_folder(small_data).images), prep, tmp_path_factory.mktemp("decoded"),
                            show_progress=False)
    images = torch.from_numpy(decoded.pixels[np.arange(len(decoded.images))])
    cuts = [len(model.units) // 2, len(model.units)]  # a mid-network activation and the pooled features
    return pretrained, model, images, cuts, tmp_path_factory.mktemp("cache")


def _torch_prefixes(model, images, cuts, prep):
    with torch.no_grad():
        return model.prefixes(normalise(images, prep), cuts)


def _run_in_batches(runner, images: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Uneven batches, a batch of one among them: the exported batch axis must really be dynamic."""
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == len(images)
    parts = [runner(images[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return [torch.cat(outputs) for outputs in zip(*parts)]


def test_onnxruntime_matches_pytorch_at_a_mid_cut_and_at_the_pooled_features(lite0):
    pretrained, model, images, cuts, cache = lite0
    runner = prefix_runner(model, cuts, pretrained.preprocessing, CPU, "onnxruntime", cache, pretrained.cache_key)
    got = _run_in_batches(runner, images, [25, 1, len(images) - 26])
    want = _torch_prefixes(model, images, cuts, pretrained.preprocessing)
    assert images.dtype == torch.uint8 and runner.engine == "onnxruntime"  # no silent fallback to PyTorch
    mid, pooled = got
    assert mid.dim() == 4 and pooled.shape == (len(images), model.backbone.num_features)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == torch.float32
        scale = max(1.0, float(w.abs().max()))  # mid-network activations reach ~30: 1e-4 of that
        assert float((g - w).abs().max()) < 1e-4 * scale
    assert float(want[1].std(dim=0).mean()) > 0.05  # real, distinct images: agreement is not between constants


def test_the_export_is_reused_not_redone(lite0, monkeypatch):
    pretrained, model, images, cuts, cache = lite0
    prefix_runner(model, cuts, pretrained.preprocessing, CPU, "auto", cache, pretrained.cache_key)
    exported, = (cache / "onnx").glob("*.onnx")
    before = exported.stat()

    def no_second_export(*args, **kwargs):
        raise AssertionError("exported again")
    monkeypatch.setattr(torch.onnx, "export", no_second_export)
    runner = prefix_runner(model, cuts, pretrained.preprocessing, CPU, "auto", cache, pretrained.cache_key)
    outputs = runner(images[:4])
    assert runner.engine == "onnxruntime" and [len(y) for y in outputs] == [4, 4]
    after = exported.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in (cache / "onnx").iterdir()] == [exported.name]  # no temp files left behind


def test_a_graph_that_disagrees_with_pytorch_falls_back_with_one_warning(lite0):
    """Same key, changed weights: the cached graph is stale, and the parity check must catch it."""
    pretrained, model, images, cuts, cache = lite0
    prefix_runner(model, cuts, pretrained.preprocessing, CPU, "onnxruntime", cache, pretrained.cache_key)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.backbone.conv_stem.weight.mul_(1.5)
    runner = prefix_runner(changed, cuts, pretrained.preprocessing, CPU, "onnxruntime", cache, pretrained.cache_key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _run_in_batches(runner, images, [30, len(images) - 30])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("ONNX Runtime differs from PyTorch by ")
    assert runner.engine == "torch" and runner.max_abs_delta > 1e-2
    want = _torch_prefixes(changed, images, cuts, pretrained.preprocessing)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("error", [torch.onnx.errors.OnnxExporterError, RuntimeError])
def test_a_network_the_exporter_rejects_runs_on_pytorch_with_a_warning(lite0, tmp_path, monkeypatch, error):
    """Whatever both exporters raise (torch's own error type, or a tracer's RuntimeError), PyTorch runs the pass."""
    pretrained, model, images, cuts, _ = lite0

    def reject(*args, **kwargs):
        raise error("unsupported operator\nlong report ...")
    monkeypatch.setattr(torch.onnx, "export", reject)
    with pytest.warns(UserWarning, match=r"cannot export .* to ONNX \(unsupported operator\); running"):
        runner = prefix_runner(model, cuts, pretrained.preprocessing, CPU, "auto", tmp_path, "other-key")
    want = _torch_prefixes(model, images[:3], cuts, pretrained.preprocessing)
    assert runner.engine == "torch" and all(torch.equal(g, w) for g, w in zip(runner(images[:3]), want))


def test_a_bug_outside_the_exporters_is_not_taken_for_a_network_they_reject(lite0, tmp_path, monkeypatch):
    """Only what the exporters raise falls back to PyTorch; a programming error on the way stops the run."""
    pretrained, model, _, cuts, _ = lite0

    def broken(*args):
        raise TypeError("a bug in the cache key")
    monkeypatch.setattr(onnx_export, "key_digest", broken)
    with pytest.raises(TypeError, match="a bug in the cache key"):
        prefix_runner(model, cuts, pretrained.preprocessing, CPU, "auto", tmp_path, "other-key")


def test_engine_choice(lite0):
    pretrained, model, _, cuts, cache = lite0
    assert resolve_engine("auto", CPU) == "onnxruntime"
    assert resolve_engine("auto", torch.device("cuda")) == "torch"
    assert resolve_engine("torch", CPU) == "torch"
    with pytest.raises(UserError, match=r"^unknown engine 'tensorrt' \(option --engine\); choose one of: auto, "
                                        r"torch, onnxruntime$"):
        prefix_runner(model, cuts, pretrained.preprocessing, CPU, "tensorrt", cache, pretrained.cache_key)
    with pytest.raises(UserError, match="CPU only"):
        resolve_engine("onnxruntime", torch.device("cuda"))
