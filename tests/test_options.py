"""Every option is checked before anything is written; disk trouble is one line naming the path."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from transferlab.cli import main

BAD_OPTIONS = [
    ["--seed", "-1"], ["--frozen-lr", "-1"], ["--finetune-lr", "nan"], ["--scratch-lr", "inf"],
    ["--image-size", "-5"], ["--image-size", "0"], ["--image-size", "10000"], ["--device", "mps"],
    ["--device", "meta"], ["--device", "xpu"], ["--name", "n" * 250], ["--time-budget", "nan"],
    ["--time-budget=-5m"], ["--val-fraction", "1.5"], ["--batch-size", "0"], ["--target-acc", "2"],
    ["--cached-views", "0"], ["--frozen-epochs", "-1"], ["--unfreeze-last", "-3"],
    ["--mlflow-uri", "gopher://host/x"], ["--tensorboard", "/dev/null"],
]


@pytest.mark.parametrize("option", BAD_OPTIONS, ids=lambda o: " ".join(o)[:30])
@pytest.mark.parametrize("command", ["compare", "demo"])
def test_a_bad_option_is_one_line_and_writes_nothing(command, option, small_data, tmp_path, capsys):
    args = [command] + ([str(small_data)] if command == "compare" else []) + option + [
        "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --") and err.count("\n") == 1, err
    assert option[0].split("=")[0] in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'}): the full/read-only "
                    "disk cases need one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _compare_args(data: Path, runs: Path, cache: Path) -> list[str]:
    cfg = tiny_config(data, runs)
    return ["compare", str(data), "--backbone", cfg.backbone, "--image-size", "32", "--frozen-epochs", "1",
            "--finetune-epochs", "1", "--skip-scratch", "--unfreeze-last", "6", "--runs-dir", str(runs),
            "--cache-dir", str(cache), "--engine", "torch", "--quiet"]


def test_a_full_disk_is_one_line_and_leaves_nothing_that_looks_finished(small_data, tmp_path, capsys):
    with mounted_tmpfs(tmp_path / "small", "size=96k") as disk:
        code = main(_compare_args(small_data, disk / "runs", tmp_path / "cache"))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: No space left on device: '{disk}")
        run_dir, = (disk / "runs").iterdir()
        assert not (run_dir / "results.json").exists()
        assert not list(run_dir.rglob(".*.tmp")), "a temp file was left behind"
        for path in run_dir.rglob("*.json"):
            json.loads(path.read_text())  # what was written is whole


def test_a_read_only_runs_dir_is_refused_before_anything_runs(small_data, tmp_path, capsys):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as disk:
        code = main(_compare_args(small_data, disk / "runs", tmp_path / "cache"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--runs-dir" in err and str(disk / "runs") in err
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_runs_dir_as_a_normal_user(small_data, tmp_path):
    """chmod does not stop root: run the CLI as `nobody` where the machine allows it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user; as a normal user the chmod case is this one")
    runs, data = tmp_path / "runs", tmp_path / "data"
    runs.mkdir()
    shutil.copytree(small_data, data)
    os.chmod(runs, 0o555)
    for p in (tmp_path, *tmp_path.parents):
        os.chmod(p, os.stat(p).st_mode | 0o005) if p != Path("/") else None
    args = _compare_args(data, runs, tmp_path / "cache")
    home = tmp_path / "home"
    home.mkdir(mode=0o777)
    os.chmod(home, 0o777)
    env = os.environ | {"HOME": str(home), "MPLCONFIGDIR": str(home / "mpl")}
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                           "transferlab.cli", *args], capture_output=True, text=True, timeout=120, env=env)
    if "setpriv" in done.stderr and done.returncode != 2:
        pytest.skip(f"setpriv cannot switch users here: {done.stderr.strip()}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: cannot create a run folder") and done.stderr.count("\n") == 1
    assert not any(runs.iterdir())


@pytest.mark.parametrize("extra, message", [
    (["--test-fraction", "0.2"], "--test-fraction splits a data folder"),
    (["--test", "VAL"], "overlaps the --val"),
    (["--test", "TRAIN/Coat"], "overlaps the --train"),
])
def test_a_test_set_that_would_train_or_choose_is_refused(extra, message, embedded_dirs, tmp_path, capsys):
    train, val, _ = embedded_dirs
    extra = [e.replace("VAL", str(val)).replace("TRAIN", str(train)) for e in extra]
    assert main(["compare", "--train", str(train), "--val", str(val), *extra,
                 "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_an_older_run_is_refused_in_one_line(finished_run, tmp_path, capsys):
    old = tmp_path / "old-run"
    shutil.copytree(finished_run, old)
    for name in ("config.json", "results.json"):
        stored = json.loads((old / name).read_text())
        stored.pop("format_version")
        (old / name).write_text(json.dumps(stored))
    assert main(["report", str(old)]) == 2
    assert "older transferlab" in capsys.readouterr().err
    (old / "results.json").unlink()  # unfinished: only then is there anything to resume
    assert main(["compare", "--resume", str(old)]) == 2
    err = capsys.readouterr().err
    assert "older transferlab" in err and err.count("\n") == 1
