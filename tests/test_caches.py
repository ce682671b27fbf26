"""Decode and prefix caches: exact, invalidated by any change that matters, never trusted when corrupt."""

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data.decoded import decode_images
from transferlab.data.images import Preprocessing
from transferlab.data.row_store import RowStore
from transferlab.data.scan import scan_image_folder
from transferlab.models.backbones import load_backbone
from transferlab.models.freezing import unfreeze_last_layers
from transferlab.models.transfer_model import TransferModel
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
                            show_progress=False)
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
                           show_progress=False)
    calls = []
    original = TransferModel.prefixes
    monkeypatch.setattr(TransferModel, "prefixes", lambda self, x, ns: calls.append(len(x)) or original(self, x, ns))
    again, = prefix_outputs(model, [end], decoded.pixels, decoded.content_keys, prep, tmp_path, "lite0", CPU,
                           show_progress=False)
    assert calls == [1] and np.array_equal(first[np.arange(5)], again[np.arange(5)])  # only the shape probe ran
    for key, other_prep in (("other-weights", prep), ("lite0", Preprocessing(40, prep.mean, prep.std))):
        calls.clear()
        prefix_outputs(model, [end], decoded.pixels, decoded.content_keys, other_prep, tmp_path, key, CPU,
                       show_progress=False)
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


def test_corrupt_cache_is_detected_and_rebuilt(tmp_path):
    store = RowStore(tmp_path / "s", (4,), "float16")
    store.add(["a", "b"], np.ones((2, 4)))
    rows = tmp_path / "s" / "rows.bin"
    data = bytearray(rows.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last stored value
    rows.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt"):
        reopened = RowStore(tmp_path / "s", (4,), "float16")
    assert len(reopened) == 0 and reopened.missing(["a", "b"]) == ["a", "b"]
    reopened.add(["a", "b"], np.ones((2, 4)))
    rows.write_bytes(rows.read_bytes()[:-3])  # truncated, as by a crash or a full disk
    with pytest.warns(UserWarning, match="corrupt"):
        assert len(RowStore(tmp_path / "s", (4,), "float16")) == 0


def test_one_pass_caches_every_requested_cut(small_data, tmp_path, lite0_48):
    pretrained, model = lite0_48
    prep = pretrained.preprocessing
    decoded = _decode(small_data, prep, tmp_path)
    end, cut = len(model.units), len(model.units) - 3
    both = prefix_outputs(model, [end, cut], decoded.pixels, decoded.content_keys, prep, tmp_path, "lite0", CPU,
                          show_progress=False)
    alone = [prefix_outputs(model, [n], decoded.pixels, decoded.content_keys, prep, tmp_path / "b", "lite0", CPU,
                            show_progress=False)[0] for n in (end, cut)]
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
    assert (tmp_path / "s" / "rows.bin").stat().st_size == 4 * 2
