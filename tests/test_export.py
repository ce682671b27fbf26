"""`transferlab export`: the run's model as ONNX, parity-checked on real images; `predict --onnx` runs it."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from transferlab import evaluate_folder, export, predict
from transferlab.cli import main
from transferlab.deploy import ONNX_FILE, PARITY_TOLERANCE, SIDECAR_FILE


@pytest.fixture(scope="module")
def exported(finished_run, small_data, tmp_path_factory) -> Path:
    """A copy of a finished run with its export, parity checked on 10 real images."""
    run = Path(shutil.copytree(finished_run, tmp_path_factory.mktemp("export") / "run"))
    images = [p for class_dir in sorted(small_data.iterdir()) for p in sorted(class_dir.iterdir())[:2]]
    export(run, check_images=images)
    return run


def test_export_writes_a_graph_and_sidecar_that_match_pytorch_on_real_images(exported):
    sidecar = json.loads((exported / SIDECAR_FILE).read_text())
    model_json = json.loads((exported / "model.json").read_text())
    assert (exported / ONNX_FILE).stat().st_size > 1000
    assert {k: sidecar[k] for k in model_json} == model_json  # decode and class names travel with the graph
    assert sidecar["onnx"]["parity_inputs"] == "10 given images"
    assert 0 <= sidecar["onnx"]["parity_max_abs_logit_delta"] < PARITY_TOLERANCE


def test_predict_and_evaluate_on_onnx_runtime_agree_with_pytorch(exported, small_data):
    images = [sorted((small_data / c).iterdir())[-1] for c in ("Coat", "Shirt", "Dress")]
    on_torch, on_onnx = predict(exported, images, top_k=5), predict(exported, images, top_k=5, onnx=True)
    for t, o in zip(on_torch, on_onnx):
        assert [c for c, _ in t.top] == [c for c, _ in o.top]
        assert np.allclose([p for _, p in t.top], [p for _, p in o.top], atol=1e-5)
    a, b = evaluate_folder(exported, small_data), evaluate_folder(exported, small_data, onnx=True)
    assert a["n_images"] == b["n_images"] == 60 and a["accuracy"] == b["accuracy"]


def test_the_cli_exports_and_batches_of_any_size_run(finished_run, small_data, tmp_path, capsys):
    out = tmp_path / "deploy"
    assert main(["export", str(finished_run), "--out", str(out)]) == 0
    assert "max |delta logit| vs PyTorch" in capsys.readouterr().out
    import onnxruntime
    session = onnxruntime.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    size = json.loads((out / SIDECAR_FILE).read_text())["preprocessing"]["image_size_px"]
    for batch in (1, 7):  # the batch axis is dynamic
        logits = session.run(None, {"image": np.zeros((batch, 3, size, size), np.float32)})[0]
        assert logits.shape == (batch, 5)


def test_predict_onnx_without_an_export_or_with_a_damaged_one_is_one_line(finished_run, exported, small_data,
                                                                          tmp_path, capsys):
    assert main(["predict", str(finished_run), "--onnx", str(small_data / "Coat")]) == 2
    assert f"run `transferlab export {finished_run}` first" in capsys.readouterr().err
    damaged = Path(shutil.copytree(exported, tmp_path / "damaged"))
    (damaged / ONNX_FILE).write_bytes((damaged / ONNX_FILE).read_bytes()[:500])
    assert main(["evaluate", str(damaged), str(small_data), "--onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.onnx" in err[0] and "cannot be loaded" in err[0]
    sidecar = json.loads((exported / SIDECAR_FILE).read_text())
    (damaged / SIDECAR_FILE).write_text(json.dumps(sidecar | {"class_names": "abc"}))
    assert main(["evaluate", str(damaged), str(small_data), "--onnx"]) == 2
    assert SIDECAR_FILE in capsys.readouterr().err


def test_bad_export_options_are_one_line(finished_run, tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "has no model.json" in capsys.readouterr().err
    assert main(["export", str(finished_run), "--check-images", str(tmp_path / "missing.png")]) == 2
    assert "--check-images" in capsys.readouterr().err
