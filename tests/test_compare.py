"""compare end to end on real (small) data: outputs, reuse of the model, determinism, kill and resume."""

import json
import subprocess
import sys

from conftest import metrics_rows, tiny_config

from transferlab import compare, evaluate_folder, load_model, predict, resume
from transferlab.cli import main

OUTPUTS = ["config.json", "split.json", "metrics.jsonl", "results.json", "report.md", "report.html",
           "learning_curves.png", "confusion_matrix.png", "model.safetensors", "model.json"]




def test_compare_writes_every_output(finished_run):
    for name in OUTPUTS:
        assert (finished_run / name).stat().st_size > 0, name
    results = json.loads((finished_run / "results.json").read_text())
    assert set(results["phases"]) == {"scratch", "frozen", "finetuned"}
    for phase in results["phases"].values():
        assert phase["gap"] == phase["train_acc"] - phase["val_acc"]
        assert phase["seconds"] > 0 and 0 <= phase["val_acc"] <= 1
    assert results["data"]["n_train"] + results["data"]["n_val"] == 60
    assert sum(sum(row) for row in results["confusion_matrix"]["matrix"]) == results["data"]["n_val"]
    split = json.loads((finished_run / "split.json").read_text())
    assert list(split["files"].values()).count("val") == results["data"]["n_val"]
    assert len(metrics_rows(finished_run)) == 1 + 2 + 2
    report = (finished_run / "report.md").read_text()
    assert "scratch (before)" in report and "fine-tuned" in report and "Verdict" in report


def test_frozen_phase_trains_only_the_head(finished_run):
    results = json.loads((finished_run / "results.json").read_text())
    frozen, finetuned = results["phases"]["frozen"], results["phases"]["finetuned"]
    assert frozen["trainable_parameters"] == 1280 * 128 + 128 + 128 * 5 + 5
    assert frozen["trainable_parameters"] < finetuned["trainable_parameters"] < finetuned["total_parameters"]
    assert finetuned["unfreeze"]["layers_counted"] == 6


def test_saved_model_round_trips_through_predict_and_evaluate(finished_run, small_data):
    model, meta = load_model(finished_run)
    results = json.loads((finished_run / "results.json").read_text())
    assert meta["class_names"] == results["data"]["class_names"]
    images = sorted((small_data / "Coat").iterdir())[:3]
    predictions = predict(finished_run, images, top_k=2)
    assert [p.path for p in predictions] == images
    assert all(len(p.top) == 2 and p.top[0][1] >= p.top[1][1] for p in predictions)
    # evaluating on the run's own validation images reproduces the stored validation accuracy
    split = json.loads((finished_run / "split.json").read_text())
    val_dir = small_data.parent / "val_only"
    for rel, subset in split["files"].items():
        if subset == "val":
            (val_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (val_dir / rel).write_bytes((small_data / rel).read_bytes())
    evaluated = evaluate_folder(finished_run, val_dir)
    assert evaluated["n_images"] == results["data"]["n_val"]
    assert abs(evaluated["accuracy"] - results["phases"][results["model_phase"]]["val_acc"]) < 1e-9


def test_cli_predict_json_and_report_rebuild(finished_run, small_data, capsys):
    image = sorted((small_data / "Dress").iterdir())[0]
    assert main(["predict", str(finished_run), str(image), "--top-k", "3", "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output[0]["path"] == str(image) and len(output[0]["top"]) == 3
    (finished_run / "report.md").unlink()
    assert main(["report", str(finished_run)]) == 0
    assert "Before and after" in (finished_run / "report.md").read_text()


def test_same_seed_same_split_and_metrics(small_data, finished_run, tmp_path):
    again = compare(tiny_config(small_data, tmp_path))
    assert (again / "split.json").read_text().replace(str(again), "") == \
        (finished_run / "split.json").read_text().replace(str(finished_run), "")
    assert metrics_rows(again) == metrics_rows(finished_run)


# `transferlab compare` that, once epoch 5's checkpoint and metrics line are written (inside the fine-tune
# phase), says so on stdout and waits to be killed: the kill lands at that point, not wherever a poll caught it.
STOP_INSIDE_FINE_TUNE = """
import sys, threading
from transferlab.cli import main
from transferlab.experiments import phases
write = phases.write_jsonl_atomic
def write_then_wait(path, rows):
    write(path, rows)
    if path.name == "metrics.jsonl" and len(rows) == 5:
        print(f"metrics.jsonl rows: {len(rows)}", flush=True)
        threading.Event().wait()
phases.write_jsonl_atomic = write_then_wait
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(small_data, tmp_path):
    cfg = tiny_config(small_data, tmp_path, frozen_epochs=4, finetune_epochs=3, scratch_epochs=2)
    reference = compare(cfg)
    args = [sys.executable, "-c", STOP_INSIDE_FINE_TUNE, "compare", str(small_data), "--backbone", cfg.backbone,
            "--image-size", "32", "--scratch-epochs", "2", "--frozen-epochs", "4", "--finetune-epochs", "3",
            "--unfreeze-last", "6", "--batch-size", "16", "--runs-dir", str(tmp_path / "killed"),
            "--cache-dir", str(cfg.cache_dir), "--engine", "torch", "--quiet"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            reached = process.stdout.readline()  # the barrier: the child waits there until it is killed
        finally:
            process.kill()  # SIGKILL
    assert reached == "metrics.jsonl rows: 5\n", f"run ended before it could be killed: {reached!r}"
    metrics, = (tmp_path / "killed").glob("*/metrics.jsonl")
    run_dir = metrics.parent
    assert not (run_dir / "results.json").exists()
    for path in run_dir.rglob("*.json*"):
        text = path.read_text()
        [json.loads(line) for line in text.splitlines()] if path.suffix == ".jsonl" else json.loads(text)
    resume(run_dir, show_progress=False)
    assert metrics_rows(run_dir) == metrics_rows(reference)
    done = json.loads((run_dir / "results.json").read_text())
    assert done["phases"]["finetuned"]["val_acc"] == json.loads((reference / "results.json").read_text())[
        "phases"]["finetuned"]["val_acc"]


def test_unknown_backbone_is_a_one_line_error_and_leaves_no_run(small_data, tmp_path, capsys):
    code = main(["compare", str(small_data), "--backbone", "mobilenetv9_nope", "--runs-dir", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: unknown backbone 'mobilenetv9_nope'") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
