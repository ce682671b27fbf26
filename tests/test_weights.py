"""The offline weights are real ImageNet weights, and untrusted files cannot run code."""

import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from transferlab.data.images import load_for_model
from transferlab.errors import UserError
from transferlab.models.backbones import load_backbone
from transferlab.models.weights import load_matching, packaged_weights_path, read_state_dict
from transferlab.training.inputs import normalise

IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504


def _imagenet_top(photo: np.ndarray, name: str, tmp_path, k: int = 3) -> list[int]:
    model = timm.create_model(name, pretrained=False).eval()
    load_matching(model, read_state_dict(packaged_weights_path(name)), "test")
    prep = load_backbone(name, None, None).preprocessing
    Image.fromarray(photo).save(tmp_path / "photo.png")
    x = normalise(torch.from_numpy(load_for_model(tmp_path / "photo.png", prep))[None], prep)
    with torch.no_grad():
        return model(x)[0].topk(k).indices.tolist()


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_packaged_weights_recognise_a_real_cat(name, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    assert IMAGENET_CATS & set(_imagenet_top(skimage_data.chelsea(), name, tmp_path))


def test_packaged_weights_recognise_coffee(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    assert {ESPRESSO, CUP, COFFEE_MUG} & set(_imagenet_top(skimage_data.coffee(), "tf_efficientnet_lite0", tmp_path))


def test_weights_use_their_own_preprocessing():
    prep = load_backbone("tf_efficientnet_lite0", None, None).preprocessing
    assert (prep.mean, prep.std, prep.interpolation, prep.image_size_px) == ((0.5,) * 3, (0.5,) * 3, "bicubic", 224)


def test_local_safetensors_and_pth_load_identically(tmp_path):
    reference = load_backbone("tf_efficientnet_lite0", None, 64).module.state_dict()
    save_file({k: v.contiguous() for k, v in reference.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": reference}, tmp_path / "w.pth")
    for file in ("w.safetensors", "w.pth"):
        loaded = load_backbone("tf_efficientnet_lite0", tmp_path / file, 64)
        assert loaded.weights.kind == "file"
        assert all(torch.equal(v, reference[k]) for k, v in loaded.module.state_dict().items())


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/transferlab_pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    torch.save({"weight": _RunsCode()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="evil.pth"):
        read_state_dict(tmp_path / "evil.pth")
    assert not os.path.exists("/tmp/transferlab_pwned")


def test_weights_for_another_model_are_rejected(tmp_path):
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    save_file(resnet, tmp_path / "resnet.safetensors")
    with pytest.raises(UserError, match="do not fit"):
        load_backbone("tf_efficientnet_lite0", tmp_path / "resnet.safetensors", 64)


def test_no_weights_offline_names_the_three_ways(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as error:
        load_backbone("resnet18", None, 64)
    assert all(way in str(error.value) for way in ("--weights", "pip install", "online"))


def test_default_backbone_falls_back_offline_with_a_notice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    chosen = load_backbone(None, None, 64)
    assert chosen.name == "tf_efficientnet_lite0" and "mobilenetv2_100" in chosen.notice
    assert chosen.weights.kind == "package"
