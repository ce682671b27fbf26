"""results.json, written and read in one place: typed results (results.py) to JSON and back, with one-line
errors naming the file and the key at fault. Torch-free."""

import json
import types
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from transferlab.atomic import write_json_atomic
from transferlab.errors import UserError, quoted
from transferlab.formats import RUN_FORMAT_VERSION, STUDY_FORMAT_VERSION
from transferlab.results import ABSENT_WHEN_NONE, RESULTS_FILE, STUDY_KIND, CellResult, RunResult, StudyResult


def to_json(value: Any) -> Any:
    """A result (or any part of one) as JSON values, fields in declaration order."""
    if is_dataclass(value):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)
                if not (f.metadata == ABSENT_WHEN_NONE and getattr(value, f.name) is None)}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


class _Mismatch(ValueError):
    """A part of a JSON file that does not fit its type; the reader turns it into a UserError."""


_PRIMITIVES = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def from_json(hint: Any, value: Any, where: str = "") -> Any:
    """`value` (parsed JSON) as `hint` (a result type, or a type inside one); _Mismatch names the key at fault."""
    origin = get_origin(hint)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise _Mismatch(f"'{where.removesuffix('.')}' is not an object" if where else "not an object")
        names, hints = [f.name for f in fields(hint)], get_type_hints(hint)
        unexpected = [k for k in value if k not in names]
        if unexpected:
            raise _Mismatch(f"unexpected key '{where}{unexpected[0]}'")
        missing = [f.name for f in fields(hint)
                   if f.name not in value and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise _Mismatch(f"no key '{where}{missing[0]}'")
        return hint(**{k: from_json(hints[k], v, f"{where}{k}.") for k, v in value.items()})
    what = where.removesuffix(".")
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(get_args(hint)):
            return None
        if len(options) == 1:
            return from_json(options[0], value, where)
        for option in options:
            try:
                return from_json(option, value, where)
            except _Mismatch:
                continue
        raise _Mismatch(f"'{what}' is {json.dumps(value)[:40]}, not {' or '.join(o.__name__ for o in options)}")
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise _Mismatch(f"'{what}' is not a list")
        item = get_args(hint)[0] if origin is list else Any
        return [from_json(item, v, f"{what}[{i}].") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Mismatch(f"'{what}' is not an object")
        item = get_args(hint)[1] if origin is dict else Any
        return {k: from_json(item, v, f"{where}{k}.") for k, v in value.items()}
    if hint in _PRIMITIVES and (isinstance(value, bool) != (hint is bool) or not isinstance(value, _PRIMITIVES[hint])):
        raise _Mismatch(f"'{what}' is {json.dumps(value)[:40]}, not a {hint.__name__}")
    return value


def results_json(result: RunResult | StudyResult | CellResult) -> dict:
    """The whole file: a run's and a study's say their format version, a study's that it is one."""
    if isinstance(result, RunResult):
        return {"format_version": RUN_FORMAT_VERSION} | to_json(result)
    if isinstance(result, StudyResult):
        return {"format_version": STUDY_FORMAT_VERSION, "kind": STUDY_KIND} | to_json(result)
    return to_json(result)


def write_results(path: Path, result: RunResult | StudyResult | CellResult) -> None:
    """The one writer of results.json files (atomic: a reader sees the old file or the new one)."""
    write_json_atomic(path, results_json(result))


def _typed(hint: type, results: dict, path: Path, fix: str) -> Any:
    try:
        return from_json(hint, results)
    except _Mismatch as e:
        raise UserError(f"{quoted(path)} does not hold this transferlab's results ({e}): the file was damaged or "
                        f"edited; {fix}") from None


def _parsed(path: Path) -> Any:
    """The file's JSON; json.JSONDecodeError or UnicodeDecodeError (a ValueError) when it is not JSON."""
    return json.loads(path.read_bytes())


def read_run_results(run_dir: Path) -> RunResult:
    """results.json is written last, when a run finishes: without it there is nothing to report yet."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    if not run_dir.is_dir():
        raise UserError(f"run folder {quoted(run_dir)} does not exist; give the folder `transferlab compare` printed")
    if not path.is_file() and not (run_dir / "config.json").is_file():  # e.g. RUN/checkpoints: nothing to resume
        raise UserError(f"{quoted(run_dir)} is not a transferlab run folder (no config.json); give the folder "
                        "`transferlab compare` printed")
    resume = f"resume it with `transferlab compare --resume {quoted(run_dir)}`"
    if not path.is_file():
        raise UserError(f"{quoted(path)} does not exist: this run has not finished; {resume}")
    try:
        results = _parsed(path)
    except ValueError as e:
        raise UserError(f"{quoted(path)} is not valid JSON ({e}): the run did not finish or the file was "
                        f"damaged; {resume}") from None
    if not isinstance(results, dict):
        raise UserError(f"{quoted(path)} holds a JSON {type(results).__name__}, not a run's results; {resume}")
    if results.get("format_version") != RUN_FORMAT_VERSION:
        raise UserError(f"{quoted(path)} was written by an older transferlab (results format "
                        f"{results.get('format_version', 1)}, this one reads {RUN_FORMAT_VERSION}); its report.md is "
                        "still there, or re-run compare to rebuild it")
    return _typed(RunResult, {k: v for k, v in results.items() if k != "format_version"}, path,
                  "re-run compare to rebuild it")


def read_study_results(study_dir: Path) -> StudyResult:
    path = Path(study_dir) / RESULTS_FILE
    if not path.is_file():
        raise UserError(f"{quoted(path)} does not exist: the study has not finished; re-run the same "
                        "`transferlab study` command to finish it")
    try:
        results = _parsed(path)
    except ValueError as e:
        raise UserError(f"{quoted(path)} is not valid JSON ({e}); re-run the study to rebuild it") from None
    if not isinstance(results, dict) or results.get("format_version") != STUDY_FORMAT_VERSION \
            or results.get("kind") != STUDY_KIND:
        raise UserError(f"{quoted(path)} is not a study's results in format {STUDY_FORMAT_VERSION}; re-run the study")
    return _typed(StudyResult, {k: v for k, v in results.items() if k not in ("format_version", "kind")}, path,
                  "re-run the study to rebuild it")


def is_study_folder(folder: Path) -> bool:
    """A study's folder: its results.json says so (also when copied away from its cells), or it has cells/ (a
    study not finished yet)."""
    try:
        if _parsed(Path(folder) / RESULTS_FILE).get("kind") == STUDY_KIND:
            return True
    except (OSError, ValueError, AttributeError):
        pass  # the reader says what is wrong with it
    return (Path(folder) / "cells").is_dir()


def read_any_results(folder: Path) -> RunResult | StudyResult:
    """A run's or a study's results, as the folder says (`transferlab runs` lists both)."""
    return read_study_results(folder) if is_study_folder(folder) else read_run_results(folder)


def read_cell_result(path: Path) -> CellResult:
    """A finished cell's own results.json, which a study reuses instead of training the cell again."""
    path = Path(path)
    fix = f"delete the folder {quoted(path.parent)} to train this cell again"
    try:
        results = _parsed(path)
    except ValueError as e:
        raise UserError(f"{quoted(path)} is not valid JSON ({e}); {fix}") from None
    return _typed(CellResult, results, path, fix)
