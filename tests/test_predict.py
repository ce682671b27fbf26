"""predict / evaluate / the saved model on damaged inputs: a FIFO, edited model.json, truncated weights,
empty folders, a full disk. Each gives a skip with a warning or one `error:` line, never a hang or a traceback."""

import json
import os
import resource
import shutil
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest

from transferlab import evaluate_folder, load_model, predict
from transferlab.cli import main
from transferlab.data.images import ImageDecodeError, decode_rgb
from transferlab.models.saved import save_model
from transferlab.models.transfer_model import HeadConfig

HANG_SECONDS = 60  # far beyond what these calls take on tiny data; only a blocked open() gets near it


@pytest.fixture()
def run_copy(finished_run, tmp_path) -> Path:
    """A finished run this test may damage."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.fixture()
def image(small_data) -> Path:
    return sorted((small_data / "Coat").iterdir())[0]


def _call_beside_fifos(fifos: list[Path], call: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Run `call` in a thread; if it blocks on a FIFO, give the FIFO a writer so the thread ends, then fail."""
    outcome: dict[str, Any] = {}

    def target():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome["value"] = call()
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                outcome["error"] = e
        outcome["warnings"] = [str(w.message) for w in caught]

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_SECONDS)
    if thread.is_alive():
        for fifo in fifos:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(HANG_SECONDS)
        pytest.fail(f"blocked opening a FIFO for over {HANG_SECONDS} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], outcome["warnings"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_decoder_refuses_a_fifo_without_opening_it_for_reading(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        _call_beside_fifos([fifo], lambda: decode_rgb(fifo))


def test_predict_and_evaluate_skip_a_fifo_with_one_warning_naming_it(finished_run, small_data, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    good = sorted((small_data / "Coat").iterdir())[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    os.mkfifo(folder / "x.png")

    predictions, caught = _call_beside_fifos([folder / "x.png"], lambda: predict(finished_run, [folder]))
    assert [p.path.name for p in predictions] == [p.name for p in good]
    assert [w for w in caught if "x.png" in w] == [f"skipping '{folder / 'x.png'}': not a regular file"]

    labelled = tmp_path / "labelled"
    for class_dir in sorted(small_data.iterdir())[:2]:
        (labelled / class_dir.name).mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:2]:
            shutil.copy(path, labelled / class_dir.name / path.name)
    os.mkfifo(labelled / "Coat" / "x.png")
    result, caught = _call_beside_fifos([labelled / "Coat" / "x.png"], lambda: evaluate_folder(finished_run, labelled))
    assert result["n_images"] == 4
    assert result["skipped"] == [{"path": str(labelled / "Coat" / "x.png"), "reason": "not a regular file"}]
    assert len([w for w in caught if "x.png" in w]) == 1


def _set(field: str, value: Any) -> Callable[[dict], None]:
    def damage(meta: dict) -> None:
        *parents, key = field.split(".")
        target = meta
        for parent in parents:
            target = target[parent]
        target[key] = value
    return damage


# (how model.json is damaged, a phrase the one-line error must contain)
DAMAGED_META = {
    "no preprocessing": (lambda m: m.pop("preprocessing"), "has no 'preprocessing'"),
    "preprocessing not an object": (_set("preprocessing", [32]), "'preprocessing' must be an object"),
    "image size 0": (_set("preprocessing.image_size_px", 0), "image_size_px"),
    "image size negative": (_set("preprocessing.image_size_px", -32), "image_size_px"),
    "image size huge": (_set("preprocessing.image_size_px", 10 ** 9), "image_size_px"),
    "image size a string": (_set("preprocessing.image_size_px", "32"), "image_size_px"),
    "class_names a string": (_set("class_names", "abc"), "class_names"),
    "class_names repeated": (lambda m: m["class_names"].__setitem__(1, m["class_names"][0]), "class_names"),
    "one class name fewer than the weights": (lambda m: m["class_names"].pop(), "trained for 5 classes"),
    "one class name more than the weights": (lambda m: m["class_names"].append("Hat"), "trained for 5 classes"),
    "std 0": (_set("preprocessing.std", [0, 0.5, 0.5]), "preprocessing.std"),
    "mean of 2 numbers": (_set("preprocessing.mean", [0.5, 0.5]), "preprocessing.mean"),
    "mean NaN": (_set("preprocessing.mean", [0.5, float("nan"), 0.5]), "preprocessing.mean"),
    "unknown interpolation": (_set("preprocessing.interpolation", "cubic"), "interpolation"),
    "crop_pct infinite": (_set("preprocessing.crop_pct", float("inf")), "crop_pct"),
    "unknown backbone": (_set("backbone", "no_such_net_v9"), "no_such_net_v9"),
    "another backbone": (_set("backbone", "resnet18"), "does not fit the backbone"),
    "another head width": (_set("head.hidden_units", 64), "does not fit the backbone"),
    "head width huge": (_set("head.hidden_units", 10 ** 12), "hidden_units"),
    "newer format": (_set("format_version", 2), "format_version"),
}


@pytest.mark.parametrize("damage,phrase", DAMAGED_META.values(), ids=DAMAGED_META.keys())
def test_damaged_model_json_is_one_line_naming_the_file(run_copy, image, capsys, damage, phrase):
    meta = json.loads((run_copy / "model.json").read_text())
    damage(meta)
    (run_copy / "model.json").write_text(json.dumps(meta))
    assert main(["predict", str(run_copy), str(image)]) == 2
    line = _one_error_line(capsys)
    assert phrase in line and "compare" in line, line
    assert "model.json" in line or "model.safetensors" in line, line


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "\xff"], ids=["empty", "not JSON", "a list", "not UTF-8"])
def test_unreadable_model_json_is_one_line(run_copy, image, capsys, text):
    (run_copy / "model.json").write_bytes(text.encode("latin-1"))
    assert main(["predict", str(run_copy), str(image)]) == 2
    assert "model.json" in _one_error_line(capsys)


@pytest.mark.parametrize("keep_fraction", [0.0, 0.5, 0.999], ids=["empty", "half", "last bytes missing"])
def test_truncated_weights_are_one_line_naming_the_file(run_copy, image, capsys, keep_fraction):
    weights = run_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:int(len(data) * keep_fraction)])
    assert main(["evaluate", str(run_copy), str(image.parent.parent)]) == 2
    line = _one_error_line(capsys)
    assert "model.safetensors" in line and "compare" in line, line


def test_predict_on_an_empty_folder_is_a_user_error(finished_run, tmp_path, capsys):
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert main(["predict", str(finished_run), str(tmp_path / "empty")]) == 2
    line = _one_error_line(capsys)
    assert f"no images found in '{tmp_path / 'empty'}'" in line and "suffixes" in line and "png" in line


@pytest.mark.parametrize("top_k", ["0", "-2"])
def test_predict_top_k_below_one_is_a_user_error(finished_run, image, capsys, top_k):
    assert main(["predict", str(finished_run), str(image), "--top-k", top_k]) == 2
    assert "--top-k" in _one_error_line(capsys)


def test_evaluate_with_nothing_decodable_names_the_folder(finished_run, tmp_path, capsys):
    labelled = tmp_path / "labelled"
    for name in ("Coat", "Dress"):
        (labelled / name).mkdir(parents=True)
        (labelled / name / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["evaluate", str(finished_run), str(labelled)]) == 2
    line = _one_error_line(capsys)
    assert f"none of the 2 images in '{labelled}' could be decoded" in line


def test_evaluate_on_a_folder_without_some_classes_says_which(finished_run, small_data, tmp_path):
    """Before: '100.0 % (balanced 100.0 %)' on one class of five, without a word."""
    labelled = tmp_path / "labelled"
    shutil.copytree(small_data / "Coat", labelled / "Coat")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluated = evaluate_folder(finished_run, labelled, onnx=False)
    others = [name for name in evaluated["class_names"] if name != "Coat"]
    assert [str(w.message) for w in caught if "learnt from" not in str(w.message)] == [
        f"'{labelled}' has no folder of class {', '.join(repr(n) for n in others)}; the accuracies cover the other 1 "
        f"of the run's {len(others) + 1} classes"]


def test_predict_on_a_folder_reads_jfif_and_says_what_it_left_out(finished_run, image, tmp_path):
    """Before, a Windows `.jfif` JPEG and a `notes.txt` beside the images vanished from the output without a word."""
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy(image, folder / "a.png")
    decode_rgb(image).save(folder / "b.jfif", format="JPEG")
    (folder / "notes.txt").write_text("where these came from")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predicted = predict(finished_run, [folder])
    assert [p.path for p in predicted] == [folder / "a.png", folder / "b.jfif"]
    assert [str(w.message) for w in caught] == [
        f"1 file in '{folder}' is not an image by its suffix, left out (e.g. '{folder / 'notes.txt'}'); name an "
        "image file to classify it anyway"]


def test_evaluate_on_images_the_model_trained_on_says_so(finished_run, run_copy, small_data):
    """Before, `evaluate RUN DATA` on the run's own data printed its accuracy with no word that it learnt from them."""
    split = json.loads((finished_run / "split.json").read_text())
    trained = sum(subset == "train" for subset in split["files"].values())
    n = sum(1 for p in small_data.rglob("*.png"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_folder(finished_run, small_data, onnx=False)
    assert 0 < trained < n and [str(w.message) for w in caught] == [
        f"{trained} of the {n} images in '{small_data}' are images this model learnt from (their content is in its "
        "split.json); accuracy on them says little about new images"]
    for damaged in ("{}", '{"files": [], "content": {}}', "not json"):  # evaluate still answers, without it
        (run_copy / "split.json").write_text(damaged)
        assert evaluate_folder(run_copy, small_data, onnx=False)["n_images"] == n


def test_a_full_disk_while_saving_is_an_oserror_and_keeps_the_old_model(run_copy, image):
    """RLIMIT_FSIZE stands in for a full disk: the write fails part-way, as ENOSPC would."""
    model, meta = load_model(run_copy)
    before = predict(run_copy, [image])
    old_bytes = (run_copy / "model.safetensors").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(old_bytes) // 2, hard))
    try:
        with pytest.raises(OSError):
            save_model(run_copy, model, backbone=meta["backbone"], class_names=meta["class_names"],
                       preprocessing=meta["preprocessing"], head=HeadConfig(**meta["head"]),
                       phase=meta["trained_phase"], val_acc=meta["val_acc"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert (run_copy / "model.safetensors").read_bytes() == old_bytes
    leftovers = [p.name for p in run_copy.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert leftovers == []  # no temp file (.lock is the run's lock file, meant to stay)
    assert predict(run_copy, [image]) == before
