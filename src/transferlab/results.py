"""What a run and a study produce, as values: declared once here, written to JSON and
read back through the same types (results_io.py), so the producers (experiments/) and the readers
(reporting/, the CLI, tracking) cannot drift.

Each dataclass mirrors one object of results.json key for key and in the same order. A field marked
ABSENT_WHEN_NONE is left out of the JSON when None (a key that only some phases or entries have);
every other field is always written, None as null. Parts whose shape another module declares, or that are
free-form (per-epoch rows, precision probes, unfreeze plans, the recipe, preprocessing, the environment),
stay dicts. Torch-free: reporting rebuilds a report without importing torch.
"""

from dataclasses import dataclass, field, fields

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
    excluded: list[str] = field(default_factory=list)  # dropped from train/validation by --exclude (older runs: none)


@dataclass(frozen=True)
class AuditIssue:
    """One image the audit doubts, in the order of its score (lowest first)."""

    file: str
    subset: str                 # "train" or "val": the audit never reads test
    given: str                  # the class folder it is in
    suggested: str              # the class the out-of-fold probe gives it
    score: float                # 0..1; low = likely wrong (label: cleanlab's label quality; outlier: LOF)
    reason: str                 # "label", "outlier" or "duplicate"
    detail: str = ""            # for a duplicate: the file it copies


@dataclass(frozen=True)
class AuditResult:
    """`transferlab audit` (and compare's Audit section): doubtful images of train + validation."""

    n_images: int
    folds: int
    probe_accuracy: float        # out-of-fold accuracy against the given labels
    counts: dict[str, int]       # per reason
    issues: list[AuditIssue]
    seconds: float
    features: str                # which features the probe read (backbone, input size)


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
    audit: AuditResult | None = field(default=None, metadata=ABSENT_WHEN_NONE)  # off: --no-audit, older runs


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
    # as in PhaseResult: why it ended, and its smoothed validation gain over its last epochs (older: absent)
    stopped: str | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    recent_val_gain: float | None = field(default=None, metadata=ABSENT_WHEN_NONE)

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
    # wall seconds of the attempt that finished it (a resumed cell: since it resumed), and where that ran,
    # "host:pid" (older: absent)
    seconds: float | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    ran_on: str | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    # the study's row only: found finished instead of trained
    reused: bool | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    # the study's row only, in studies sharded over torchrun ranks before --ray: read, no longer written
    rank: int | None = field(default=None, metadata=ABSENT_WHEN_NONE)


@dataclass(frozen=True)
class FailedCell:
    """A cell that failed on both of its attempts on Ray (its worker died, or it raised): it has no row in the
    tables, and is listed with the error instead."""

    part: str                                # the row of cells it belongs to: data, a grid point, a backbone
    hash: str
    seed: int
    k: int | str
    error: str


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
    # the accuracy a user aims at (--target-acc): the report says how many images each method needs for it
    target_acc: float | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    # the cells that failed on Ray (none: absent)
    failed: list[FailedCell] | None = field(default=None, metadata=ABSENT_WHEN_NONE)
    # wall seconds of the `transferlab study` that wrote this file, to set against its cells' (older: absent)
    wall_seconds: float | None = field(default=None, metadata=ABSENT_WHEN_NONE)
