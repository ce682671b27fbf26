"""What a hostile new user tried (issue 21): each case is one `error:` line naming the culprit, or the right
result, never a traceback, a silently wrong model or an orphan run folder."""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import tiny_config
from PIL import Image

from transferlab import CompareConfig, StudyConfig, UserError, compare, predict, study
from transferlab import progress
from transferlab.cli import build_parser, main
from transferlab.deploy import ONNX_FILE
from transferlab.formats import STUDY_FORMAT_VERSION
from transferlab.training.recipes import resolve_recipe


def _cli_compare(data: Path, tmp: Path, *extra: str, quiet: bool = True) -> list[str]:
    return ["compare", str(data), "--backbone", "tf_efficientnet_lite0", "--image-size", "32", "--frozen-epochs", "1",
            "--finetune-epochs", "1", "--skip-scratch", "--unfreeze-last", "6", "--no-final-fit", "--engine", "torch",
            "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"), *(["--quiet"] if quiet else []),
            *extra]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _copy_with_class(small_data: Path, tmp: Path, name: str, good: int, text_files: int) -> Path:
    """small_data plus a class `name` of `good` real images (Coats upside down, so no duplicates) and
    `text_files` text files named .png."""
    data = Path(shutil.copytree(small_data, tmp / "data"))
    images = sorted((small_data / "Coat").iterdir())
    (data / name).mkdir()
    for i in range(good):
        Image.open(images[i]).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(data / name / f"real{i}.png")
    for i in range(text_files):
        (data / name / f"text{i}.png").write_text("this is not an image")
    return data


# --- wrong results, silently ----------------------------------------------------------------------------

def test_a_class_whose_every_file_fails_to_decode_is_an_error_naming_it(small_data, tmp_path, capsys):
    data = _copy_with_class(small_data, tmp_path, "square", good=0, text_files=5)
    assert main(_cli_compare(data, tmp_path)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "class 'square' has 0 usable images (5 could not be decoded" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, needs", [([], "training and a validation"),
                                          (["--test-fraction", "0.2"], "training, a validation and a test")])
def test_a_class_with_too_few_usable_images_for_the_split_is_an_error(small_data, tmp_path, capsys, extra, needs):
    good = 1 if not extra else 2  # 2 usable images: one trains, one validates, none is left to test
    data = _copy_with_class(small_data, tmp_path, "square", good=good, text_files=3)
    assert main(_cli_compare(data, tmp_path, *extra)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"class 'square' has {good} usable images (3 could not be decoded" in line and needs in line
    assert not (tmp_path / "runs").exists()


def test_undecodable_files_are_left_out_of_the_split_and_listed_as_skipped(small_data, tmp_path):
    """A class keeps its validation image when one of its files is broken: the split is of usable images."""
    data = _copy_with_class(small_data, tmp_path, "square", good=2, text_files=3)
    run = compare(tiny_config(data, tmp_path, frozen_epochs=1, finetune_epochs=0, skip_scratch=True))
    split = json.loads((run / "split.json").read_bytes())
    assert sorted(v for k, v in split["files"].items() if k.startswith("square/")) == ["train", "val"]
    assert sorted(split["skipped"]) == [f"square/text{i}.png" for i in range(3)]
    results = json.loads((run / "results.json").read_bytes())
    square = results["data"]["class_names"].index("square")
    assert results["data"]["train_per_class"][square] == 1 and results["data"]["val_per_class"][square] == 1


# --- tracebacks ------------------------------------------------------------------------------------------

def test_an_unwritable_default_cache_is_one_line_before_a_run_folder_exists(small_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"} | {
        "HOME": "/proc/no-such-home", "MPLCONFIGDIR": str(tmp_path / "mpl")}
    args = [a for a in _cli_compare(small_data, tmp_path) if a not in ("--cache-dir", str(tmp_path / "cache"))]
    done = subprocess.run([sys.executable, "-m", "transferlab", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert "/proc/no-such-home/.cache/transferlab" in line and "--cache-dir" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("make_out", [lambda tmp: (tmp / "a file").write_text("x") and tmp / "a file",
                                      lambda tmp: Path("/proc/no-such/deploy"),
                                      lambda tmp: (tmp / "f").write_text("x") and tmp / "f" / "sub"],
                         ids=["an existing file", "under /proc", "under a file"])
def test_export_to_an_out_that_cannot_be_made_is_one_line(finished_run, tmp_path, capsys, make_out):
    out = make_out(tmp_path)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in finished_run.iterdir())
    assert main(["export", str(finished_run), "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--out" in line and f"'{out}'" in line
    assert sorted((p.name, p.stat().st_mtime_ns) for p in finished_run.iterdir()) == before  # compare's export kept
    assert not list(tmp_path.glob(f"**/.{ONNX_FILE}.checking"))


def test_a_non_utf8_locale_with_non_ascii_names_trains_and_evaluates(small_data, tmp_path):
    """LC_ALL=C without UTF-8 mode: Python spells the names' bytes as surrogates. Also: with stderr a pipe,
    no progress-bar frames are written."""
    data = Path(shutil.copytree(small_data, tmp_path / "données"))
    (data / "Coat").rename(data / "Coät")
    first = sorted((data / "Coät").iterdir())[0]
    first.rename(data / "Coät" / "été 1.png")
    env = {k: v for k, v in os.environ.items() if k not in ("LANG", "LANGUAGE")} | {"LC_ALL": "C", "PYTHONUTF8": "0"}
    run = lambda *args: subprocess.run([sys.executable, "-m", "transferlab", *args], capture_output=True,  # noqa: E731
                                       env=env, timeout=300)
    done = run(*[os.fsencode(a) for a in _cli_compare(data, tmp_path, quiet=False)])
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"\r" not in done.stderr
    [run_dir] = (tmp_path / "runs").iterdir()
    split = json.loads((run_dir / "split.json").read_bytes())
    assert "Coät/été 1.png" in split["files"]
    assert "Coät" in json.loads((run_dir / "model.json").read_bytes())["class_names"]
    evaluated = run("evaluate", str(run_dir), os.fsencode(data), "--json")
    assert evaluated.returncode == 0, evaluated.stderr.decode(errors="replace")
    assert json.loads(evaluated.stdout)["n_images"] == len(split["files"])


# --- the Python API validates its arguments at the boundary ------------------------------------------------

def test_predict_takes_one_path_as_one_image(finished_run, small_data):
    image = sorted((small_data / "Coat").iterdir())[0]
    [one] = predict(finished_run, str(image))
    assert one.path == image and one == predict(finished_run, [image])[0]


API_MISUSES = [
    (lambda run, image: compare("data/"), "compare(): cfg must be a CompareConfig"),
    (lambda run, image: study(tiny_config(image.parent.parent, run)), "study(): cfg must be a StudyConfig"),
    (lambda run, image: predict(None, [image]), "predict(): run_dir must be a path"),
    (lambda run, image: predict(run, [image], top_k="3"), "predict(): top_k (--top-k) must be a whole number"),
    (lambda run, image: predict(run, 5), "predict(): images must be a path or a list of paths"),
    (lambda run, image: CompareConfig(data_dir=5), "CompareConfig(): data_dir must be a path"),
    (lambda run, image: resolve_recipe("default", {"image_size_px": "32"}),
     "--image-size (image_size_px) must be a whole number from 16 to 1024 (got '32')"),
    (lambda run, image: resolve_recipe("default", {"augment": "yes"}), "--augment must be true or false (got 'yes')"),
    (lambda run, image: CompareConfig(data_dir="d", dedupe="yes"), "CompareConfig(): dedupe must be True or False"),
    (lambda run, image: CompareConfig(), "give a data folder (compare DATA; data_dir=) or --train DIR"),
]


@pytest.mark.parametrize("call, message", API_MISUSES, ids=[m for _, m in API_MISUSES])
def test_api_misuse_is_a_user_error_naming_the_argument(finished_run, small_data, call, message):
    image = sorted((small_data / "Coat").iterdir())[0]
    with pytest.raises(UserError) as error:
        call(finished_run, image)
    assert message in str(error.value) and "not both" not in str(error.value)


def test_study_config_with_a_string_for_studies_names_the_argument(small_data, tmp_path):
    with pytest.raises(UserError, match=r"StudyConfig\(\): studies must be a tuple \(got str 'data'\)"):
        StudyConfig(tiny_config(small_data, tmp_path, test_fraction=0.2), studies="data")


# --- misleading or missing words ---------------------------------------------------------------------------

def test_strict_with_an_undecodable_file_writes_no_run_folder(small_data, tmp_path, capsys):
    data = _copy_with_class(small_data, tmp_path, "square", good=3, text_files=1)
    assert main(_cli_compare(data, tmp_path, "--strict")) == 2
    assert "text0.png" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_study_folder_says_it_is_a_study(small_data, tmp_path, capsys):
    study_dir = tmp_path / "study-x"
    study_dir.mkdir()
    cfg = StudyConfig(tiny_config(small_data, tmp_path, test_fraction=0.2))
    (study_dir / "config.json").write_text(json.dumps({"format_version": STUDY_FORMAT_VERSION,
                                                       "study": cfg.to_dict(), "environment": {}}))
    assert main(["compare", "--resume", str(study_dir)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "is a study folder" in line and "transferlab study" in line and "older transferlab" not in line


def test_report_of_a_folder_that_is_not_a_run_does_not_suggest_resuming_it(finished_run, capsys):
    assert (finished_run / "checkpoints").is_dir()
    assert main(["report", str(finished_run / "checkpoints")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "not a transferlab run folder" in line and "--resume" not in line


def test_a_class_name_with_a_newline_is_refused_in_one_line(small_data, tmp_path, capsys):
    data = Path(shutil.copytree(small_data, tmp_path / "data"))
    (data / "Coat").rename(data / "Co\nat")
    assert main(_cli_compare(data, tmp_path)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "'Co\\nat'" in line and "rename" in line
    assert not (tmp_path / "runs").exists()


def test_a_damaged_model_beside_its_export_is_the_one_line_without_a_warning_first(finished_run, small_data, tmp_path,
                                                                                   capsys):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (run / "model.safetensors").write_bytes(b"")
    image = sorted((small_data / "Shirt").iterdir())[0]
    assert main(["predict", str(run), str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "model.safetensors" in err[0]


@pytest.mark.parametrize("option", ["--scratch-budget", "--time-budget"])
def test_an_infinite_duration_is_not_taken_for_no_budget(small_data, tmp_path, capsys, option):
    assert main(_cli_compare(small_data, tmp_path, option, "1e999s")) == 2
    assert "'1e999s' is not a duration" in _one_error_line(capsys.readouterr().err)


def test_weights_that_are_a_folder_or_missing_say_which(small_data, tmp_path, capsys):
    for weights, says in ((tmp_path, "is a folder"), (tmp_path / "none.pth", "does not exist")):
        assert main(_cli_compare(small_data, tmp_path, "--weights", str(weights))) == 2
        assert f"'{weights}' {says}; --weights takes" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("content", [b"", b"\x80\x02"])  # empty; a pickle cut after its header
def test_an_empty_or_cut_weights_file_is_one_line_naming_it(small_data, tmp_path, capsys, content):
    """torch.load raises a bare EOFError for these: the line names the file and the error's type."""
    weights = tmp_path / "cut.pth"
    weights.write_bytes(content)
    assert main(_cli_compare(small_data, tmp_path, "--weights", str(weights))) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"'{weights}'" in line and "EOFError" in line and ".safetensors" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option, value, says", [("--seed", "nan", "argument --seed: invalid int value: 'nan'"),
                                                 ("--frozen-epochs", "1.5", "invalid int value: '1.5'"),
                                                 ("--recipe", "fastest", "invalid choice: 'fastest'"),
                                                 ("--no-such", "a\nb", "unrecognized arguments: --no-such a\\nb")])
def test_a_malformed_option_is_one_line_not_the_usage_block(small_data, tmp_path, capsys, option, value, says):
    assert main(_cli_compare(small_data, tmp_path, option, value)) == 2
    assert says in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("report", ["report.md", "report.html"])
def test_a_folder_where_the_report_goes_is_one_line(finished_run, tmp_path, capsys, report):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (run / report).unlink()
    (run / report).mkdir()
    assert main(["report", str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{report}' is a folder where transferlab writes a file" in line


def test_a_file_where_the_checkpoints_folder_goes_is_one_line(small_data, tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert main(_cli_compare(small_data, tmp_path, "--name", "blocked", "--frozen-epochs", "2")) == 0
    run = next((tmp_path / "runs").iterdir())
    shutil.rmtree(run / "checkpoints")
    (run / "results.json").unlink()  # unfinished: --resume trains again
    (run / "checkpoints").write_text("x")
    assert main(["compare", "--resume", str(run), "--quiet"]) == 2
    assert "a file is in the way of the folder" in _one_error_line(capsys.readouterr().err)


def test_a_message_carrying_a_library_error_keeps_its_first_line_on_one_line():
    from transferlab.errors import error_text

    assert error_text(RuntimeError("first\nsecond")) == "first"
    assert error_text(EOFError()) == "EOFError"
    assert error_text(OSError("  \n ")) == "OSError"
    assert error_text(ValueError("tab\there"), limit=5) == "tab\\t"
    assert error_text(ValueError("x" * 300)) == "x" * 120


def test_an_image_name_that_is_not_utf8_is_one_line_before_a_run_folder_exists(small_data, tmp_path, capsys):
    """split.json must name every image: before, the run folder was made and its split.json refused (a folder
    `--resume` could not finish)."""
    data = Path(shutil.copytree(small_data, tmp_path / "data"))
    image = sorted((data / "Coat").iterdir())[0]
    os.rename(os.fsencode(image), os.fsencode(image.parent) + b"/bad\xffname.png")
    assert main(_cli_compare(data, tmp_path)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "bad" in line and "name.png" in line and "not UTF-8" in line
    assert not (tmp_path / "runs").exists()
    # a file that is not an image (results.json lists it as ignored), and a class folder: the same line
    os.rename(os.fsencode(data / "Coat") + b"/bad\xffname.png", os.fsencode(data / "Coat" / "notes") + b"\xff.txt")
    os.rename(os.fsencode(data / "Shirt"), os.fsencode(data) + b"/Sh\xffirt")
    assert main(_cli_compare(data, tmp_path)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "not UTF-8" in line and ("notes" in line or "Sh" in line)
    (data / "Coat" / os.fsdecode(b"notes\xff.txt")).unlink()
    assert main(_cli_compare(data, tmp_path)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "Sh\\udcffirt" in line and "not UTF-8" in line  # not "a control character"
    assert not (tmp_path / "runs").exists()


def test_a_second_process_in_a_run_folder_is_refused_and_the_folder_unchanged(finished_run, tmp_path, capsys):
    """Before, a `--resume` while the run still trained (or two of them) both trained and wrote every file."""
    from filelock import FileLock
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (run / "results.json").unlink()  # a run still training has none
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    with FileLock(run / ".lock"):  # what a training run holds
        assert main(["compare", "--resume", str(run), "--quiet"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"another transferlab is working in '{run}'" in line
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_predict_prints_one_line_an_image_and_valid_json_whatever_the_names_hold(finished_run, small_data, tmp_path,
                                                                                  capsys):
    source = sorted((small_data / "Shirt").iterdir())[0]
    newline, not_utf8 = tmp_path / "new\nline.png", Path(os.fsdecode(os.fsencode(tmp_path) + b"/bad\xffname.png"))
    for name in (newline, not_utf8):
        shutil.copy(source, name)
    assert main(["predict", str(finished_run), str(newline), str(not_utf8)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith(str(tmp_path / "new\\nline.png") + ": ")
    assert main(["predict", str(finished_run), str(not_utf8), "--json"]) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")  # no raw bytes that are not UTF-8
    assert [row["path"] for row in json.loads(out)] == [str(not_utf8)]


def test_predict_yields_each_batch_before_decoding_the_next(finished_run, small_data, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted((small_data / "Coat").iterdir())[:8]:
        shutil.copy(image, folder / image.name)
    from transferlab.predict import predict_batches
    stream = predict_batches(finished_run, folder, batch_size=4)
    assert stream.n_files == 8
    names = sorted(p.name for p in folder.iterdir())
    n_read, first = next(stream.batches)  # the first image alone: the first line is out at once
    assert n_read == 1 and [p.path.name for p in first] == names[:1]
    n_read, second = next(stream.batches)
    assert n_read == 4 and [p.path.name for p in second] == names[1:5]
    later = sorted(folder.iterdir())[5:]
    for path in later:  # the third batch is read only now: it sees them broken
        path.write_text("not an image any more")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rest = list(stream.batches)
    assert rest == [(3, [])] and sum("skipping" in str(w.message) for w in caught) == 3


def test_cli_predict_streams_json_one_image_a_line_and_no_bar_off_a_terminal(finished_run, small_data, capsys):
    folder = small_data / "Dress"
    assert main(["predict", str(finished_run), str(folder), "--batch-size", "5", "--json"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == len(list(folder.iterdir())) + 1 and lines[-1] == "]"
    assert [json.loads(line[1:])["path"] for line in lines[:-1]] == [str(p) for p in sorted(folder.iterdir())]
    assert json.loads(out) == [json.loads(line[1:]) for line in lines[:-1]]
    assert "\r" not in err
    assert main(["predict", str(finished_run), str(folder), "--batch-size", "0"]) == 2
    assert "--batch-size" in _one_error_line(capsys.readouterr().err)


class _Terminal:
    """A stderr that says it is a terminal and keeps every frame written to it."""

    def __init__(self):
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_training_bars_never_show_a_loss_beside_a_stale_zero_count_and_skip_scratch_recipe(small_data, tmp_path,
                                                                                            monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    # every update drawn, however fast the batches: the frames do not depend on the machine's speed
    monkeypatch.setattr(progress, "tqdm", functools.partial(progress.tqdm, mininterval=0, miniters=1))
    run = compare(tiny_config(small_data, tmp_path, skip_scratch=True, show_progress=True, frozen_epochs=2,
                              finetune_epochs=1))
    monkeypatch.undo()
    counts = [int(n) for n in re.findall(r"\| *(\d+)/\d+ \[[^\]\r]*loss=", terminal.text)]
    assert counts and min(counts) >= 1, terminal.text[-2000:]
    recipe = next(line for line in (run / "report.md").read_text().splitlines() if line.startswith("Recipe"))
    assert "; scratch" not in recipe and "epoch kept)." in recipe, recipe


def test_a_rerun_study_after_an_image_changed_names_study_dir(small_data, tmp_path):
    data = Path(shutil.copytree(small_data, tmp_path / "data"))
    cfg = StudyConfig(tiny_config(data, tmp_path, test_fraction=0.25, frozen_epochs=1, finetune_epochs=1,
                                  scratch_epochs=1), studies=("data",), seeds=1, ks=(None,),
                      study_dir=tmp_path / "study")
    study(cfg)
    victim, other = sorted((data / "Dress").iterdir())[0], sorted((data / "Shirt").iterdir())[0]
    victim.write_bytes(other.read_bytes())
    with pytest.raises(UserError) as error:
        study(cfg)
    assert victim.name in str(error.value) and "--study-dir" in str(error.value)
    assert "resum" not in str(error.value)


def test_a_study_cell_bar_never_counts_a_trained_cell_before_its_step(small_data, tmp_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress, "tqdm", functools.partial(progress.tqdm, mininterval=0, miniters=1))
    study(StudyConfig(tiny_config(small_data, tmp_path, test_fraction=0.25, frozen_epochs=1, finetune_epochs=1,
                                  scratch_epochs=1, show_progress=True), studies=("data",), seeds=1, ks=(None,)))
    monkeypatch.undo()
    frames = re.findall(r"\| *(\d+)/\d+ \[[^\]\r]*trained=(\d+)", terminal.text)
    assert frames and all(int(n) >= int(trained) for n, trained in frames), terminal.text[-2000:]


@pytest.mark.parametrize("field, value, says", [("frozen_epochs", -1, "--frozen-epochs"),
                                                ("seed", "x", "seed must be a whole number"),
                                                ("recipe", "fastest", "fastest")])
def test_a_bad_value_edited_into_a_runs_config_names_the_file(finished_run, tmp_path, capsys, field, value, says):
    """Before, `--resume` named only the flag (`--frozen-epochs must be …`), which the user never typed."""
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    stored = json.loads((run / "config.json").read_text())
    stored["config"][field] = value
    (run / "config.json").write_text(json.dumps(stored))
    (run / "results.json").unlink()  # unfinished: only then is there anything to resume
    assert main(["compare", "--resume", str(run), "--quiet"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: run config '{run / 'config.json'}' holds a value this transferlab refuses: ")
    assert says in line and line.endswith("put the value back or start a new run")


def test_a_folder_transferlab_writes_inside_the_data_is_refused_before_anything_is_written(small_data, tmp_path,
                                                                                            capsys, monkeypatch):
    """`cd DATA && transferlab compare .` wrote runs/ into DATA, and the second run trained on a class 'runs' of
    the first run's plots."""
    data = Path(shutil.copytree(small_data, tmp_path / "data"))
    monkeypatch.chdir(data)
    argv = _cli_compare(Path("."), tmp_path)
    del argv[argv.index("--runs-dir"):argv.index("--runs-dir") + 2]  # the default: ./runs
    assert main(argv) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: --runs-dir '{data / 'runs'}' is inside the data folder '{data}': the next run would read what "
        "transferlab writes there as a class; give a --runs-dir outside it")
    assert sorted(p.name for p in data.iterdir()) == sorted(p.name for p in small_data.iterdir())
    monkeypatch.chdir(tmp_path)  # ./runs outside the data again
    with pytest.raises(UserError, match=r"^--cache-dir '.*/data/Coat/cache' is inside the data folder"):
        CompareConfig(data_dir=data, cache_dir=data / "Coat" / "cache")
    with pytest.raises(UserError, match=r"^--study-dir '.*/data' is inside the data folder"):
        StudyConfig(tiny_config(data, tmp_path, test_fraction=0.2), study_dir=data)
    with pytest.raises(UserError, match=r"^--runs-dir '.*/val/runs' is inside the --val"):
        CompareConfig(train_dir=data, val_dir=tmp_path / "val", runs_dir=tmp_path / "val" / "runs")
    demo_like = CompareConfig(data_dir=tmp_path / "cache" / "datasets" / "x", cache_dir=tmp_path / "cache")
    assert demo_like.cache_dir == tmp_path / "cache"  # data kept in the cache, as the demo does, is fine


def test_a_val_folder_inside_or_equal_to_train_is_refused_and_links_do_not_get_round_the_checks(small_data, tmp_path):
    """`--train nest --val nest/val` trained on every validation image, under a fourth class 'val' too; a symlink
    to the data folder passed the --test and --runs-dir checks."""
    for val in (small_data / "Coat", small_data):
        with pytest.raises(UserError, match=r"^--val '.*' overlaps --train '.*': validation images would be trained"):
            CompareConfig(train_dir=small_data, val_dir=val, runs_dir=tmp_path / "runs")
    (tmp_path / "data_link").symlink_to(small_data)
    with pytest.raises(UserError, match=r"^--test '.*data_link' overlaps the data folder"):
        CompareConfig(data_dir=small_data, test_dir=tmp_path / "data_link", runs_dir=tmp_path / "runs")
    (tmp_path / "runs_link").symlink_to(small_data / "Coat")
    with pytest.raises(UserError, match=r"^--runs-dir '.*runs_link' is inside the data folder"):
        CompareConfig(data_dir=small_data, runs_dir=tmp_path / "runs_link")


def test_resuming_a_finished_run_is_one_line_and_changes_nothing(finished_run, tmp_path, capsys):
    """Before, it trained the last epochs again and rewrote results.json, the report, the model and its export."""
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    assert main(["compare", "--resume", str(run), "--quiet"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: run '{run}' is finished (it has results.json): nothing to resume; read '{run / 'report.md'}' "
        "(`transferlab report` rebuilds it), or start a new run")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


@pytest.mark.parametrize("argv, says", [
    (["demo", "--studi", "time"], "--studi time"),  # was a plain demo, the study option dropped
    (["study", "DATA", "--test", "DATA", "--test-frac", "0.3"], "--test-frac 0.3"),  # was 0.3 ignored
    (["compare", "--res", "RUN"], "--res"),  # was "drop --res" from the resume check
])
def test_an_abbreviated_option_is_unknown_not_silently_read_as_another(argv, says, tmp_path):
    """Parsed only: before, these parsed, and the demo one trained a whole demo."""
    with pytest.raises(UserError, match=f"unrecognized arguments: {says}"):
        build_parser().parse_args([str(tmp_path) if a in ("DATA", "RUN") else a for a in argv])


def test_dedupe_that_empties_validation_names_dedupe(small_data, tmp_path):
    """Before: 'the validation set is empty: every class has a single image; add images or give --val'."""
    copy = Path(shutil.copytree(small_data, tmp_path / "val"))
    cfg = replace(tiny_config(small_data, tmp_path, skip_scratch=True), data_dir=None, train_dir=small_data,
                  val_dir=copy, dedupe=True)
    n = sum(1 for p in copy.rglob("*.png"))
    with pytest.raises(UserError) as error:
        compare(cfg)
    assert str(error.value) == (f"--dedupe dropped every validation image ({n}): each is a copy of a training image; "
                                "give validation images that are not in the training data, or drop --dedupe")
    assert list((tmp_path / "runs").iterdir()) == []  # no run folder left that `runs` lists as unfinished


def test_exclude_that_empties_a_class_of_a_val_folder_names_exclude(small_data, tmp_path):
    """Before: 'no image of class … could be decoded (each is named in a warning above)', with no warning."""
    val = tmp_path / "val"
    for class_dir in sorted(small_data.iterdir()):
        shutil.copytree(class_dir, val / class_dir.name, ignore=lambda d, names: sorted(names)[2:])
    cfg = replace(tiny_config(small_data, tmp_path, skip_scratch=True), data_dir=None, train_dir=small_data,
                  val_dir=val, exclude=tuple(str(p) for p in sorted((val / "Coat").iterdir())))
    with pytest.raises(UserError) as error:
        compare(cfg)
    assert str(error.value) == (f"--exclude left no image of class 'Coat' in '{val}'; list fewer of them in "
                                "--exclude, or remove the class folder there")


def test_a_long_name_in_bytes_still_makes_a_run_folder(tmp_path):
    """--name of 80 CJK characters passed the 80-character check, then the file system refused the folder (240
    bytes plus the timestamp): 'cannot create a run folder … choose a writable --runs-dir'."""
    from transferlab.experiments.run_dir import new_run_dir
    run = new_run_dir(tmp_path / "runs", "中" * 80)
    assert run.is_dir() and run.name.endswith("中" * 66) and len(run.name.encode()) <= 255
