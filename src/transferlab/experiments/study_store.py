"""A study's folder: one driver (a `transferlab study` process, whose cells may run on Ray) works in it at a time,
on one split."""

import json
from dataclasses import replace
from pathlib import Path

from filelock import FileLock

from transferlab.atomic import lock_folder, write_json_atomic
from transferlab.errors import UserError, quoted
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.study_config import StudyConfig
from transferlab.formats import STUDY_FORMAT_VERSION

SPLIT_FIELDS = ("data_dir", "train_dir", "val_dir", "test_dir", "seed", "val_fraction", "test_fraction", "dedupe")


def lock_study_dir(study_dir: Path) -> FileLock:
    try:
        (study_dir / "cells").mkdir(parents=True, exist_ok=True)
        return lock_folder(study_dir, f"another `transferlab study` is working in {quoted(study_dir)}; wait for it "
                                      "to finish or give another --study-dir")
    except OSError as e:
        raise UserError(f"cannot create the study folder {quoted(study_dir)} ({e.strerror}); choose a writable "
                        "--study-dir") from None


def check_same_split(study_dir: Path, base: CompareConfig) -> None:
    """split.json is reused by a re-run: options that would have drawn another split are refused, not ignored."""
    config_path = study_dir / "config.json"
    if not (study_dir / "split.json").exists() or not config_path.exists():
        return
    try:
        stored = json.loads(config_path.read_bytes()).get("study", {}).get("compare", {})  # UTF-8 in any locale
    except (ValueError, AttributeError) as e:
        raise UserError(f"{quoted(config_path)} is damaged ({e}); restore it or give another --study-dir") from None
    now = base.to_dict()
    changed = [f for f in SPLIT_FIELDS if f in stored and stored[f] != now.get(f)]
    if changed:
        options = ", ".join("--" + f.replace("_dir", "").replace("_", "-") for f in changed)
        raise UserError(f"{quoted(study_dir)} holds a study on another split ({options} changed); give another "
                        "--study-dir for the new split, or the options it was started with")


def start_study(study_dir: Path, cfg: StudyConfig, base: CompareConfig, env: dict) -> None:
    """Refuse another split, write config.json."""
    check_same_split(study_dir, base)
    write_json_atomic(study_dir / "config.json", {"format_version": STUDY_FORMAT_VERSION,
                                                  "study": replace(cfg, compare=base).to_dict(),
                                                  "environment": env})
