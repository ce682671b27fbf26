"""Decode and prefix caches: exact, invalidated by any change that matters, never trusted when corrupt."""

import os

import numpy as np
import PIL
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from transferlab.data import decoded as decoded_module
from transferlab.data import fingerprints
from transferlab.data.decoded import decode_images
from transferlab.data.images import Preprocessing
from transferlab.data.row_store import RowStore
from transferlab.data.scan import scan_image_folder
from transferlab.models import weights
from transferlab.models.backbones import load_backbone
from transferlab.models.freezing import unfreeze_last_layers
from transferlab.models.transfer_model import TransferModel
from transferlab.models.weights import load_pretrained
from transferlab.training import engines
from transferlab.training.engines import compute_dtype
from transferlab.training.prefix_cache import prefix_outputs

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lite0_48():
    torch.manual_seed(0)
    pretrained = load_backbone("tf_efficientnet_lite0", None, 48)
    return pretrained, TransferModel(pretrained.module, n_classes=5).eval()


def _decode(data, prep, cache):
    return decode_images(list(scan_image_folder(data).images), prep, cache, show_progress=False)


def test_logits_from_cached_activations_equal_the_full_model(small_data, tmp_path, lite0_48):
    pretrained, model = lite0_48
    prep = pretrained.preprocessing
    decoded = _decode(small_data, prep, tmp_path)
    cut = unfreeze_last_layers(model, 20).first_trainable_unit
    assert 0 < cut < len(model.units)
    cached, = prefix_outputs(model, [cut], decoded.pixels, decoded.content_keys, prep, tmp_path, "lite0", CPU,
                            engine="torch", show_progress=False)
    from transferlab.training.inputs import ImageInputs
    positions = np.arange(len(decoded.images))
    with torch.no_grad():
        full = model(ImageInputs(decoded.pixels, prep, CPU).batch(positions, 0))
        from_cache = model.forward_from(cut, torch.from_numpy(cached[positions]).float())
    assert torch.allclose(full, from_cache, atol=2e-3, rtol=1e-3)  # fp16 cache
    assert (full.argmax(1) == from_cache.argmax(1)).all()


def test_warm_cache_is_reused_and_changes_invalidate(small_data, tmp_path, lite0_48, monkeypatch):
    pretrained, model = lite0_48
    prep = pretrained.preprocessing
    decoded = _decode(small_data, prep, tmp_path)
    end = len(model.units)
    first, = prefix_outputs(model, [end], decoded.pixels, decoded.content_keys, prep, tmp_path, "lite0", CPU,
                           engine="torch", show_progress=False)
    calls = []
    original = TransferModel.prefixes
    monkeypatch.setattr(TransferModel, "prefixes", lambda self, x, ns: calls.append(len(x)) or original(self, x, ns))
    again, = prefix_outputs(model, [end], decoded.pixels, decoded.content_keys, prep, tmp_path, "lite0", CPU,
                           engine="torch", show_progress=False)
    assert calls == [1] and np.array_equal(first[np.arange(5)], again[np.arange(5)])  # only the shape probe ran
    for key, other_prep in (("other-weights", prep), ("lite0", Preprocessing(40, prep.mean, prep.std))):
        calls.clear()
        prefix_outputs(model, [end], decoded.pixels, decoded.content_keys, other_prep, tmp_path, key, CPU,
                       engine="torch", show_progress=False)
        assert sum(calls) > len(decoded.images)  # recomputed everything (+1 for the probe)


def test_a_changed_image_is_decoded_again(small_data, tmp_path):
    prep = Preprocessing(32, (0.5,) * 3, (0.5,) * 3)
    data = tmp_path / "data"
    import shutil
    shutil.copytree(small_data, data)
    before = _decode(data, prep, tmp_path / "cache")
    victim = before.images[0].path
    Image.new("RGB", (28, 28), (255, 0, 0)).save(victim)
    after = _decode(data, prep, tmp_path / "cache")
    assert after.content_keys[0] != before.content_keys[0]
    assert (after.pixels[np.array([0])][0] == [255, 0, 0]).all()
    assert after.content_keys[1:] == before.content_keys[1:]


def _segment(store_dir):
    segment, = store_dir.glob("seg-*.bin")
    return segment


def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, monkeypatch):
    store = RowStore(tmp_path / "s", (4,), "float16")
    store.add(["a", "b"], np.ones((2, 4)))
    segment = _segment(tmp_path / "s")
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last stored value, in place: same size, same inode
    segment.write_bytes(bytes(data))
    monkeypatch.setattr(fingerprints, "_DIGESTS", {})  # a new process: checksums not verified yet
    with pytest.warns(UserWarning, match="corrupt.*checksum"):
        reopened = RowStore(tmp_path / "s", (4,), "float16")
    assert len(reopened) == 0 and reopened.missing(["a", "b"]) == ["a", "b"]
    reopened.add(["a", "b"], np.ones((2, 4)))
    assert not segment.exists()  # dropped from the index and removed when the rows were written again
    assert (RowStore(tmp_path / "s", (4,), "float16").rows(["b"])[np.array([0])] == 1).all()
    rebuilt = _segment(tmp_path / "s")
    rebuilt.write_bytes(rebuilt.read_bytes()[:-3])  # truncated, as by a crash or a full disk
    with pytest.warns(UserWarning, match="corrupt"):
        assert len(RowStore(tmp_path / "s", (4,), "float16")) == 0


def test_prefix_cache_for_a_second_cut_on_a_warm_cache(small_data, tmp_path, lite0_48):
    pretrained, model = lite0_48
    prep = pretrained.preprocessing
    decoded = _decode(small_data, prep, tmp_path)
    end, cut_a, cut_b = len(model.units), len(model.units) - 2, len(model.units) - 3
    few = np.arange(10)
    args = decoded.pixels.subset(few), decoded.content_keys[:10], prep, tmp_path, "lite0", CPU
    prefix_outputs(model, [end, cut_a], *args, engine="torch", show_progress=False)
    pooled, at_b = prefix_outputs(model, [end, cut_b], *args, engine="torch", show_progress=False)  # pooled store is complete
    alone, = prefix_outputs(model, [cut_b], *args[:3], tmp_path / "fresh", *args[4:], engine="torch", show_progress=False)
    assert np.array_equal(at_b[few], alone[few])
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "prefix").rglob("*")}
    again = prefix_outputs(model, [end, cut_b], *args, engine="torch", show_progress=False)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "prefix").rglob("*")} == before
    assert np.array_equal(again[0][few], pooled[few]) and np.array_equal(again[1][few], at_b[few])


def test_prefix_cache_is_keyed_by_compute_dtype_and_versions(small_data, tmp_path, lite0_48, monkeypatch):
    pretrained, model = lite0_48
    prep = pretrained.preprocessing
    decoded = _decode(small_data, prep, tmp_path)
    few = np.arange(6)  # four passes: a few images show the keys apart
    args = [len(model.units)], decoded.pixels.subset(few), decoded.content_keys[:6], prep, tmp_path, "lite0", CPU

    def store_dirs():
        prefix_outputs(model, *args, engine="torch", show_progress=False)
        return {p.name for p in (tmp_path / "prefix").iterdir()}

    seen = [store_dirs()]
    assert compute_dtype(CPU) == "torch.float32"
    monkeypatch.setattr(engines, "compute_dtype", lambda device: "torch.bfloat16")
    seen.append(store_dirs())
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    seen.append(store_dirs())
    monkeypatch.setattr(timm, "__version__", "0.0.1")
    seen.append(store_dirs())
    assert [len(dirs) for dirs in seen] == [1, 2, 3, 4]


def test_decoded_cache_is_keyed_by_decoder_and_pillow_versions(small_data, tmp_path, monkeypatch):
    prep = Preprocessing(32, (0.5,) * 3, (0.5,) * 3)
    decoded_calls = []
    original = decoded_module.load_for_model
    monkeypatch.setattr(decoded_module, "load_for_model", lambda *a: decoded_calls.append(1) or original(*a))
    n_images = len(_decode(small_data, prep, tmp_path).images)
    _decode(small_data, prep, tmp_path)
    assert len(decoded_calls) == n_images  # warm: nothing decoded again
    monkeypatch.setattr(decoded_module, "DECODER_VERSION", decoded_module.DECODER_VERSION + 1)
    _decode(small_data, prep, tmp_path)
    monkeypatch.setattr(PIL, "__version__", "0.0.1")
    _decode(small_data, prep, tmp_path)
    assert len(decoded_calls) == 3 * n_images
    assert len(list((tmp_path / "decoded").iterdir())) == 3


@pytest.mark.parametrize("kind", ["file", "package"])
def test_weights_fingerprint_follows_content_not_name(tmp_path, monkeypatch, kind):
    model = nn.Linear(4, 2)

    def fingerprint(path):
        monkeypatch.setattr(weights, "packaged_weights_path", lambda backbone: path)
        return load_pretrained(model, "tf_efficientnet_lite0", path if kind == "file" else None).fingerprint

    save_file({"weight": torch.ones(2, 4), "bias": torch.zeros(2)}, tmp_path / "a.safetensors")
    first = fingerprint(tmp_path / "a.safetensors")
    (tmp_path / "a.safetensors").rename(tmp_path / "b.safetensors")
    assert fingerprint(tmp_path / "b.safetensors") == first
    # other weights under the same name, size and mtime (as `cp -p` or rsync leave them)
    stat = (tmp_path / "b.safetensors").stat()
    save_file({"weight": torch.full((2, 4), 2.0), "bias": torch.zeros(2)}, tmp_path / "c.safetensors")
    os.utime(tmp_path / "c.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (tmp_path / "c.safetensors").replace(tmp_path / "b.safetensors")
    assert (tmp_path / "b.safetensors").stat().st_size == stat.st_size
    assert fingerprint(tmp_path / "b.safetensors") != first


def test_one_pass_caches_every_requested_cut(small_data, tmp_path, lite0_48):
    pretrained, model = lite0_48
    prep = pretrained.preprocessing
    decoded = _decode(small_data, prep, tmp_path)
    end, cut = len(model.units), len(model.units) - 3
    both = prefix_outputs(model, [end, cut], decoded.pixels, decoded.content_keys, prep, tmp_path, "lite0", CPU,
                          engine="torch", show_progress=False)
    alone = [prefix_outputs(model, [n], decoded.pixels, decoded.content_keys, prep, tmp_path / "b", "lite0", CPU,
                            engine="torch", show_progress=False)[0] for n in (end, cut)]
    positions = np.arange(len(decoded.images))
    for joint, single in zip(both, alone):
        assert np.array_equal(joint[positions], single[positions])
    with torch.no_grad():
        pooled = model.forward_from(cut, torch.from_numpy(both[1][positions]).float())
        direct = model.forward_from(end, torch.from_numpy(both[0][positions]).float())
    assert torch.allclose(pooled, direct, atol=2e-2)


def test_rows_written_without_their_index_are_cut_off(tmp_path):
    store = RowStore(tmp_path / "s", (4,), "float16")
    store.add(["a"], np.ones((1, 4)))

    def dies_after_first_chunk():
        yield ["b"], np.full((1, 4), 2)
        raise KeyboardInterrupt  # killed before the index is written

    with pytest.raises(KeyboardInterrupt):
        store.append(dies_after_first_chunk())
    reopened = RowStore(tmp_path / "s", (4,), "float16")
    assert reopened.missing(["a", "b"]) == ["b"]
    assert (reopened.rows(["a"])[np.array([0])] == 1).all()
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.name != "index.json") == \
        [".lock", _segment(tmp_path / "s").name]  # the half-written segment is gone
    assert _segment(tmp_path / "s").stat().st_size == 4 * 2
