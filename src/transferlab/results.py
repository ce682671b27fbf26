"""What a run and a study produce, as values: declared once here, written to JSON and read back through the
same types, so the producers (experiments/) and the readers (reporting/, the CLI, tracking) cannot drift.

Each dataclass mirrors one object of results.json key for key and in the same order. A field marked
ABSENT_WHEN_NONE is left out of the JSON when None (a key that only some phases or entries have);
every other field is always written, None as null. Parts whose shape another module declares, or that are
free-form (per-epoch rows, precision probes, unfreeze plans, the recipe, preprocessing, the environment),
stay dicts. Torch-free: reporting rebuilds a report without importing torch.
"""

import json
import types
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from transferlab.atomic import write_json_atomic
from transferlab.errors import UserError, quoted
from transferlab.formats import RUN_FORMAT_VERSION, STUDY_FORMAT_VERSION

RESULTS_FILE = "results.json"
STUDY_KIND = "study"  # a study's results.json says so; a run's has no "kind"


ABSENT_WHEN_NONE = {"absent_when_none": True}  # field metadata: leave the key out of the JSON when None


@dataclass(frozen=True)
class Weights:
    """Where the backbone's weights came from (the environment also holds their fingerprint)."""

    kind: str
    location: str


@dataclass(frozen=True)
class PhaseResult:
    """One phase of a run (scratch, frozen, finetuned, a stage, or the final fit), as CellPhases measured it."""

    epochs: list[dict]                       # metrics.jsonl's rows of this phase: free-form
    best_epoch: int
    train_acc: float | None                  # None: no epoch ran
    val_acc: float | None                    # None for the final fit: it trained on validation
    balanced_val_acc: float | None
    val_acc_over_last_epoch: float | None    # what choosing the epoch on validation added
    gap: float | None
    seconds: float
    cache_seconds: float
    train_seconds: float
    learning_rate: float
    trainable_parameters: int
    total_parameters: int
    steps: int
    precision: str
    precision_probe: dict | None             # what measure_cpu_precision found; None when not measured
    # the freezing plan (models/freezing.py); scratch has none
    unfreeze: dict | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    # the final fit only: the phase it trained again
    fit_of: str | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    # the final fit only: train + validation images
    n_train: int | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    test_acc: float | None = field(default=None, metadata=ABSENT_WHEN_NONE)  # set once the test set is read
    balanced_test_acc: float | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    # why it ended: "plateau" or "budget" (training/stopping.py), or "epochs" (its cap); absent in older runs
    stopped: str | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    # how much its smoothed validation accuracy rose over its last epochs (`recent_gain`); None with too few
    recent_val_gain: float | None = field(default=None, metadata=ABSENT_WHEN_NONE)

    def accuracy_on(self, subset: str) -> float | None:
        """Its accuracy on "test" or "validation" (a verdict's and a confusion matrix's `subset`)."""
        return self.test_acc if subset == "test" else self.val_acc


@dataclass(frozen=True)
class Augment:
    enabled: bool
    cached_views: int
    mode: str


@dataclass(frozen=True)
class Leakage:
    """Duplicates of training images found in validation (and `test`, once the test set is read)."""

    exact_duplicates: int
    near_duplicates: int
    dropped: bool
    examples: list[str]
    test: "Leakage | None" = field(default=None, metadata=ABSENT_WHEN_NONE)


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass(frozen=True)
class RunData:
    """What a run trained, chose and was tested on."""

    source: str
    val_source: str
    test_source: str
    split: str
    class_names: list[str]
    train_per_class: list[int]
    val_per_class: list[int]
    n_train: int
    n_val: int
    n_test: int
    skipped: list[SkippedFile]
    ignored_files: list[str]
    leakage: Leakage
    imbalanced: bool


@dataclass(frozen=True)
class FinalFit:
    of: str
    n_train: int


@dataclass(frozen=True)
class ConfusionMatrix:
    phase: str
    subset: str                              # "test", or "validation" when there is no test set
    matrix: list[list[int]]                  # rows are true classes, columns predicted ones


@dataclass(frozen=True)
class Verdict:
    subset: str
    phase: str
    target_acc: float
    acc: float
    target_met: bool
    val_optimism: float | None               # None when the verdict is on test
    time_budget_seconds: float
    transfer_seconds: float
    time_target_met: bool


@dataclass(frozen=True)
class RunResult:
    """A compare run's results.json (its format_version is written and checked, not stored)."""

    run_dir: str
    backbone: str
    weights: Weights
    notice: str | None
    device: str
    preprocessing: dict                      # Preprocessing.to_dict() (models/backbones.py)
    recipe: dict                             # {"overridden": [...], **Recipe.to_dict()} (training/recipes.py)
    augment: Augment
    data: RunData
    decode_seconds: float
    phases: dict[str, PhaseResult]
    model_phase: str
    final_fit: FinalFit | None
    best_phase: str
    confusion_matrix: ConfusionMatrix
    verdict: Verdict
    engine: str
    training_precision: dict[str, str]
    total_seconds: float
    environment: dict                        # run_dir.environment(): weights, versions, threads: free-form

    def to_json(self) -> dict:
        return {"format_version": RUN_FORMAT_VERSION} | to_json(self)


@dataclass(frozen=True)
class CellPhaseResult:
    """The part of a PhaseResult a study cell keeps (after its test read)."""

    val_acc: float
    test_acc: float
    seconds: float
    train_seconds: float
    steps: int
    best_epoch: int
    trainable_parameters: int
    total_parameters: int

    @classmethod
    def of(cls, phase: PhaseResult) -> "CellPhaseResult":
        return cls(**{f.name: getattr(phase, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class CellResult:
    """One study cell: its own cells/<hash>/results.json, and its row in the study's (with `reused`, `rank`)."""

    hash: str
    seed: int
    k: int | str                             # images per class asked for, or "all"
    images_per_class: float
    repeats: int
    phases: dict[str, CellPhaseResult]
    test_predictions: dict[str, list[int]]
    # the study's row only: found finished instead of trained
    reused: bool | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    # the study's row only: the torchrun rank that ran it (older: absent)
    rank: int | None = field(default=None, metadata=ABSENT_WHEN_NONE)

    def to_json(self) -> dict:
        return to_json(self)


@dataclass(frozen=True)
class EpochBudget:
    frozen: int
    finetuned: int
    scratch: int


@dataclass(frozen=True)
class Budget:
    kind: str
    pool_images: int
    epochs: EpochBudget
    batch_size: int


@dataclass(frozen=True)
class BackboneResult:
    """One backbone of the backbones study: transfer cells and inference cost, or why it was skipped."""

    name: str
    skipped: str | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    weights: Weights | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    cells: list[CellResult] | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    # models/inference_cost.measure_inference
    parameters: int | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    size_mb: float | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    latency_ms_per_image: dict[str, float] | None = field(default=None, metadata=ABSENT_WHEN_NONE)


@dataclass(frozen=True)
class UnfreezePoint:
    """One point of the unfreezing grid: the last `blocks` of `of_blocks` blocks at `learning_rate`."""

    blocks: int | str                        # or "all"
    of_blocks: int
    learning_rate: float
    cells: list[CellResult]


@dataclass(frozen=True)
class ScheduleStage:
    """FineTuneStage.to_dict() (experiments/phases.py)."""

    name: str
    unfreeze: str
    epochs: int
    learning_rate: float


@dataclass(frozen=True)
class UnfreezeSchedule:
    learning_rate: float
    stages: list[ScheduleStage]
    cells: list[CellResult]


@dataclass(frozen=True)
class StudyData:
    class_names: list[str]
    pool_per_class: list[int]
    n_val: int
    n_test: int
    test_labels: list[int]
    leakage: Leakage


@dataclass(frozen=True)
class StudyResult:
    """A study's results.json (format_version and kind are written and checked, not stored)."""

    study_dir: str
    studies: list[str]
    seeds: list[int]
    backbone: str
    weights: Weights
    notice: str | None
    device: str
    image_size_px: int
    recipe: dict                             # Recipe.to_dict() (training/recipes.py)
    budget: Budget
    cells: list[CellResult]
    backbones: list[BackboneResult]
    unfreeze: list[UnfreezePoint]
    unfreeze_schedule: UnfreezeSchedule | None
    environment: dict                        # free-form, as RunResult's
    data: StudyData

    def to_json(self) -> dict:
        return {"format_version": STUDY_FORMAT_VERSION, "kind": STUDY_KIND} | to_json(self)


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
        missing = [f.name for f in fields(hint) if f.name not in value and f.default is MISSING]
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


def write_results(path: Path, result: RunResult | StudyResult | CellResult) -> None:
    """The one writer of results.json files (atomic: a reader sees the old file or the new one)."""
    write_json_atomic(path, result.to_json())


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


def read_any_results(folder: Path) -> RunResult | StudyResult:
    """A run's or a study's results, as the file's `kind` says (`transferlab runs` lists both)."""
    try:
        is_study = _parsed(Path(folder) / RESULTS_FILE).get("kind") == STUDY_KIND
    except (OSError, ValueError, AttributeError):
        is_study = False  # the run reader says what is wrong with it
    return read_study_results(folder) if is_study else read_run_results(folder)


def read_cell_result(path: Path) -> CellResult:
    """A finished cell's own results.json, which a study reuses instead of training the cell again."""
    path = Path(path)
    fix = f"delete the folder {quoted(path.parent)} to train this cell again"
    try:
        results = _parsed(path)
    except ValueError as e:
        raise UserError(f"{quoted(path)} is not valid JSON ({e}); {fix}") from None
    return _typed(CellResult, results, path, fix)
