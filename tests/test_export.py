"""The run's model as ONNX: compare writes it, `transferlab export` renews it parity-checked on real images, and
`predict`/`evaluate` run it by default, without torch, only while it is the run's model."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch

from transferlab import evaluate_folder, export, predict
from transferlab.cli import main
from transferlab.data.fingerprints import file_digest
from transferlab.data.images import Preprocessing, normalised_nchw
from transferlab.deploy import ONNX_FILE, OUTPUT_NAME, PARITY_TOLERANCE, SIDECAR_FILE
from transferlab.models.model_meta import read_model_meta
from transferlab.errors import UserError
from transferlab.experiments.compare import _export_for_predict
from transferlab.models.onnx_export import export_onnx
from transferlab.models.onnx_runtime import load_onnx_model
from transferlab.training.inputs import normalise


@pytest.fixture(scope="module")
def exported(finished_run, small_data, tmp_path_factory) -> Path:
    """A copy of a finished run with its export made again, parity checked on 10 real images."""
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
    on_torch, on_onnx = predict(exported, images, top_k=5, onnx=False), predict(exported, images, top_k=5, onnx=True)
    for t, o in zip(on_torch, on_onnx):
        assert [c for c, _ in t.top] == [c for c, _ in o.top]
        assert np.allclose([p for _, p in t.top], [p for _, p in o.top], atol=1e-5)
    a, b = evaluate_folder(exported, small_data, onnx=False), evaluate_folder(exported, small_data, onnx=True)
    assert a["n_images"] == b["n_images"] == 60 and a["accuracy"] == b["accuracy"]


def test_predict_onnx_imports_neither_torch_nor_timm(exported, small_data):
    """Their imports are 4-5 s of a PyTorch predict's start: the ONNX path must answer without them."""
    image = sorted((small_data / "Coat").iterdir())[0]
    code = ("import sys; from transferlab.cli import main; "
            f"code = main(['predict', '--onnx', {str(exported)!r}, {str(image)!r}]); "
            "print(code, sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    first, last = child.stdout.splitlines()[0], child.stdout.splitlines()[-1]
    assert first.startswith(f"{image}: ") and last == "0 []"


def test_inference_normalises_as_training_does_to_the_bit(exported):
    prep = Preprocessing.from_dict(read_model_meta(exported / "model.json")["preprocessing"])
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8)
    assert np.array_equal(normalised_nchw(pixels, prep), normalise(torch.from_numpy(pixels), prep).numpy())


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
    bare = Path(shutil.copytree(finished_run, tmp_path / "bare"))
    (bare / ONNX_FILE).unlink()
    assert main(["predict", str(bare), "--onnx", str(small_data / "Coat")]) == 2
    assert f"run `transferlab export {bare}` first" in capsys.readouterr().err
    damaged = Path(shutil.copytree(exported, tmp_path / "damaged"))
    (damaged / ONNX_FILE).write_bytes((damaged / ONNX_FILE).read_bytes()[:500])
    assert main(["evaluate", str(damaged), str(small_data), "--onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.onnx" in err[0] and "is not the graph" in err[0]
    sidecar = json.loads((exported / SIDECAR_FILE).read_text())
    # a sidecar written for the damaged bytes (by hand): ONNX Runtime's own refusal is the line
    (damaged / SIDECAR_FILE).write_text(json.dumps(sidecar | {"onnx": sidecar["onnx"] | {
        "graph_digest": file_digest(damaged / ONNX_FILE)}}))
    assert main(["evaluate", str(damaged), str(small_data), "--onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.onnx" in err[0] and "cannot be loaded" in err[0]
    (damaged / SIDECAR_FILE).write_text(json.dumps(sidecar | {"class_names": "abc"}))
    assert main(["evaluate", str(damaged), str(small_data), "--onnx"]) == 2
    assert SIDECAR_FILE in capsys.readouterr().err


def test_compare_leaves_an_export_of_its_model_and_predict_runs_it_unless_told_otherwise(finished_run, small_data):
    sidecar = json.loads((finished_run / SIDECAR_FILE).read_text())
    assert sidecar["onnx"]["parity_inputs"] == "8 seeded noise images"
    assert 0 <= sidecar["onnx"]["parity_max_abs_logit_delta"] < PARITY_TOLERANCE
    image = sorted((small_data / "Shirt").iterdir())[0]
    with patch("transferlab.predict.load_onnx_model", side_effect=load_onnx_model) as on_onnx:
        default, on_torch = predict(finished_run, image, top_k=5), predict(finished_run, image, top_k=5, onnx=False)
    assert on_onnx.call_count == 1  # the default took the export; onnx=False did not
    assert [c for c, _ in default[0].top] == [c for c, _ in on_torch[0].top]
    assert np.allclose([p for _, p in default[0].top], [p for _, p in on_torch[0].top], atol=1e-5)


@pytest.mark.parametrize("change", ["weights", "model.json"])
def test_an_export_not_made_from_the_runs_model_is_never_run(finished_run, small_data, tmp_path, capsys, change):
    """A model trained again, or files copied in from another run, beside an older export."""
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    if change == "weights":
        data = bytearray((run / "model.safetensors").read_bytes())
        data[-1] ^= 1  # the last byte of the last tensor: still a loadable model
        (run / "model.safetensors").write_bytes(bytes(data))
    else:
        (run / "model.json").write_text(json.dumps(json.loads((run / "model.json").read_text()) | {"val_acc": 0.5}))
    image = sorted((small_data / "Shirt").iterdir())[0]
    with patch("transferlab.predict.load_onnx_model") as on_onnx, \
            pytest.warns(UserWarning, match="was not exported from the model now in"):
        predict(run, image)
    assert on_onnx.call_count == 0
    assert main(["predict", str(run), "--onnx", str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was not exported from the model now in" in err[0]


def _failed_export_line(finished_run, tmp_path, capsys, target: str, error: Exception) -> str:
    """`export` of a copy of the run with `target` raising `error`: exit 2, one line (returned), nothing changed."""
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir())
    with patch(target, side_effect=error):
        assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()) == before
    return err[0]


def test_an_export_onnx_runtime_cannot_run_is_one_line_and_changes_nothing(finished_run, tmp_path, capsys):
    """`export` prints it and exits 2 (compare's own export turns failures into a warning: the next tests)."""
    line = _failed_export_line(finished_run, tmp_path, capsys, "transferlab.deploy.onnxruntime_session",
                               RuntimeError("no kernel for Op\nline 2"))
    assert "ONNX Runtime cannot run the export" in line and "nothing was changed" in line


def test_a_network_neither_exporter_takes_is_one_line_and_changes_nothing(finished_run, tmp_path, capsys):
    """Both torch exporters failing, whatever type they raise (here a tracer's RuntimeError), is the user's one line."""
    line = _failed_export_line(finished_run, tmp_path, capsys, "torch.onnx.export",
                               RuntimeError("unsupported operator aten::foo\ntrace ..."))
    assert "cannot export the model of" in line and "(unsupported operator aten::foo)" in line


@pytest.mark.parametrize("failure", [UserError("cannot export"), RuntimeError("exporter bug"), OSError(28, "No space")])
def test_an_export_that_fails_at_the_end_of_compare_is_a_warning_and_predict_uses_pytorch(finished_run, small_data,
                                                                                           tmp_path, failure):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (run / ONNX_FILE).unlink()
    with patch("transferlab.experiments.compare.export_model", side_effect=failure), \
            pytest.warns(UserWarning, match="no ONNX export for `predict`.*it will use PyTorch"):
        _export_for_predict(run)
    image = sorted((small_data / "Shirt").iterdir())[0]
    with patch("transferlab.predict.load_onnx_model") as on_onnx:
        assert predict(run, image)[0].path == image
    assert on_onnx.call_count == 0


def test_a_damaged_or_older_sidecar_falls_back_to_pytorch_by_default_and_is_one_line_with_onnx(
        finished_run, small_data, tmp_path, capsys):
    image = sorted((small_data / "Shirt").iterdir())[0]
    sidecar = json.loads((finished_run / SIDECAR_FILE).read_text())
    def without(key: str) -> dict:
        return sidecar | {"onnx": {k: v for k, v in sidecar["onnx"].items() if k != key}}
    for name, text, why in [("damaged", "{not json", "is not valid JSON"),
                            ("older", json.dumps(without("weights_digest")), "does not record the weights it was made from"),
                            ("oldest", json.dumps(without("graph_digest")), "does not record the graph it describes")]:
        run = Path(shutil.copytree(finished_run, tmp_path / name))
        (run / SIDECAR_FILE).write_text(text)
        with pytest.warns(UserWarning, match=why):
            assert predict(run, image)[0].path == image
        assert main(["predict", "--onnx", str(run), str(image)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0] and f"transferlab export {run}" in err[0] and "--no-onnx" in err[0]


def test_another_graph_under_the_sidecar_is_refused_and_never_read_under_its_class_names(finished_run, small_data,
                                                                                       tmp_path, capsys):
    """Another run's model.onnx copied in beside this sidecar: before, `predict` read its logits under these class
    names (a wrong answer, or an IndexError when it had more classes)."""
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    sidecar = json.loads((run / SIDECAR_FILE).read_text())
    size, n_classes = sidecar["preprocessing"]["image_size_px"], len(sidecar["class_names"])
    other = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, n_classes + 1))
    export_onnx(other.eval(), torch.zeros(2, 3, size, size), run / ONNX_FILE, [OUTPUT_NAME])
    image = sorted((small_data / "Shirt").iterdir())[0]
    with pytest.warns(UserWarning, match="is not the graph"):
        assert predict(run, image, top_k=n_classes)[0].path == image  # on PyTorch, this run's own model
    assert main(["predict", "--onnx", str(run), str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the graph" in err[0] and f"transferlab export {run}" in err[0]


def test_an_export_on_its_own_runs_when_current_and_is_one_line_with_the_right_fix_when_not(finished_run, small_data,
                                                                                           tmp_path, capsys):
    """`export --out` folders have no PyTorch model to fall back to: a stale one is the error, naming `--out`."""
    out = tmp_path / "alone"
    assert main(["export", str(finished_run), "--out", str(out)]) == 0
    image = sorted((small_data / "Shirt").iterdir())[0]
    assert main(["predict", str(out), str(image)]) == 0
    capsys.readouterr()
    sidecar = json.loads((out / SIDECAR_FILE).read_text())
    (out / SIDECAR_FILE).write_text(json.dumps(sidecar | {"onnx": {k: v for k, v in sidecar["onnx"].items()
                                                                  if k != "graph_digest"}}))
    assert main(["predict", str(out), str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not record the graph" in err[0] and f"transferlab export RUN --out {out}" in err[0]


@pytest.mark.parametrize("in_the_way", [ONNX_FILE, SIDECAR_FILE])
def test_a_folder_in_the_way_of_an_export_is_one_line_before_anything_is_written(finished_run, tmp_path, capsys,
                                                                                 in_the_way):
    out = tmp_path / "out"
    (out / in_the_way).mkdir(parents=True)
    assert main(["export", str(finished_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{in_the_way}' is a folder where transferlab writes a file" in err[0]
    assert [p.name for p in out.iterdir()] == [in_the_way]  # no 14 MB `.model.onnx.checking` left


def test_an_out_that_is_another_runs_folder_is_one_line_and_keeps_its_export(finished_run, tmp_path, capsys):
    """Before, `export RUN --out OTHER_RUN` replaced the other run's model.onnx with this run's."""
    other = Path(shutil.copytree(finished_run, tmp_path / "other"))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in other.iterdir())
    assert main(["export", str(finished_run), "--out", str(other)]) == 2
    assert capsys.readouterr().err == (
        f"error: --out '{other}' is another run's folder (it has model.safetensors): its export would be replaced by "
        f"this run's; give a folder of its own, or `transferlab export '{other}'` for that run\n")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in other.iterdir()) == before


def test_bad_export_options_are_one_line(finished_run, tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "has no model.json" in capsys.readouterr().err
    assert main(["export", str(finished_run), "--check-images", str(tmp_path / "missing.png")]) == 2
    assert "--check-images" in capsys.readouterr().err
