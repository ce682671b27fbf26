"""Training recipes: named presets of every choice that decides accuracy, so a report can name what ran.

`Recipe` is the one declaration of a training choice: its fields' metadata give the CLI flag, its help
and the values it accepts, so the command line, the config and the phase specs all derive from it.
`seeds` is seed 002 to the letter, `seeds-000` seed 000's variant; `default` is the stronger recipe
measured in benchmarks/bench_recipes.py (README, "Recipes"), `fast` the default with half its fine-tune
steps. Any field can be overridden one by one; the run's config.json records the resolved recipe and which
fields were overridden.
"""

import math
import types
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any, Callable, Iterator

from transferlab.data.images import MAX_IMAGE_SIZE_PX, MIN_IMAGE_SIZE_PX
from transferlab.errors import UserError
from transferlab.options import parse_duration
from transferlab.training.stopping import GAIN_WINDOW, MIN_GAIN

MAX_EPOCHS = 10_000
MAX_CACHED_VIEWS = 32
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup-cosine")


def option(help: str, *, flag: str | None = None, low: float | None = None, high: float | None = None,
           bounds: str = "[]", choices: tuple[str, ...] | None = None, parse: Callable[[str], Any] | None = None,
           default: Any = MISSING) -> Any:
    """A recipe field with what the CLI and the checks need: its help, its flag (default: --field-name), the
    values it takes (`bounds` says which ends of [low, high] are included) and how its flag's text is read."""
    return field(default=default, metadata={"help": help, "flag": flag, "low": low, "high": high,
                                            "bounds": bounds, "choices": choices, "parse": parse})


UNFREEZE_FORMS = "keras:N, layers:N, blocks:K (N, K whole numbers ≥ 0)"
UNFREEZE_KINDS = {  # kind: (CLI flag, what it counts)
    "layers": ("--unfreeze-last", "fine-tune the last N layers with parameters"),
    "blocks": ("--unfreeze-blocks", "fine-tune the last K timm blocks"),
    "keras": ("--unfreeze-keras-layers", "fine-tune what Keras' base.layers[-N:] would (seed 002: 20)"),
}


@dataclass(frozen=True)
class Unfreeze:
    """What fine-tuning trains: the last `count` layers, blocks or Keras layers (models/freezing.py does it)."""

    kind: str
    count: int

    def __post_init__(self) -> None:
        if self.kind not in UNFREEZE_KINDS or isinstance(self.count, bool) or not isinstance(self.count, int) \
                or self.count < 0:
            raise UserError(f"unfreeze '{self}' is not one of {UNFREEZE_FORMS}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.count}"

    @classmethod
    def parse(cls, text: str) -> "Unfreeze":
        """'blocks:5' -> Unfreeze('blocks', 5): how config.json and reports write it."""
        kind, _, count = str(text).partition(":")
        if not count.isdigit():
            raise UserError(f"unfreeze '{text}' is not one of {UNFREEZE_FORMS}")
        return cls(kind, int(count))


@dataclass(frozen=True)
class Optimization:
    """How every phase steps; each phase brings its own epochs and learning rate."""

    optimizer: str = option("adamw | adam | sgd (momentum 0.9, Nesterov)", choices=OPTIMIZERS, default="adam")
    weight_decay: float = option("decoupled for adamw, L2 for adam and sgd", low=0, high=1, bounds="[)",
                                 default=0.0)
    adam_eps: float = option("Adam's epsilon: Keras uses 1e-7, PyTorch 1e-8", low=0, high=1, bounds="()",
                             default=1e-8)
    schedule: str = option("per step: constant, or 10%% linear warm-up then cosine to 0", choices=SCHEDULES,
                           default="constant")
    label_smoothing: float = option("of the cross-entropy targets", low=0, high=1, bounds="[)", default=0.0)
    keep_best_epoch: bool = option("keep the best-validation epoch of each phase (else the last, as Keras' fit)",
                                   default=True)


@dataclass(frozen=True)
class Stopping:
    """When a phase stops before its epoch cap: on a plateau of its smoothed validation accuracy (training/
    stopping.py), or when its wall-clock budget is spent; patience 0 runs every epoch."""

    plateau_patience: int = option("epochs without a gain of --scratch-min-gain in smoothed validation accuracy "
                                   "before scratch stops (0: it runs every epoch)", flag="--scratch-patience", low=0,
                                   high=MAX_EPOCHS, default=0)
    plateau_min_gain: float = option("the smallest gain in smoothed validation accuracy that counts as improving",
                                     flag="--scratch-min-gain", low=0, high=1, bounds="[)", default=0.0)
    budget_seconds: float | None = option("wall-clock budget of the scratch phase, e.g. 15m, or none",
                                          flag="--scratch-budget", low=0, high=math.inf, bounds="()",
                                          parse=lambda text: math.inf if text == "none" else parse_duration(text),
                                          default=None)

    def __post_init__(self) -> None:
        if self.budget_seconds == math.inf:  # no budget is None, as config.json stores it
            object.__setattr__(self, "budget_seconds", None)


PARTS = (Optimization, Stopping)  # a recipe's parts: their fields are overridden and stored flat, like its own


@dataclass(frozen=True)
class Recipe:
    name: str
    image_size_px: int | None = option("input size in px (default: the weights' own)", flag="--image-size",
                                       low=MIN_IMAGE_SIZE_PX, high=MAX_IMAGE_SIZE_PX)
    head_dropout: float = option("the head is GAP -> Dense 128 relu -> Dropout -> Dense n", low=0, high=1,
                                 bounds="[)")
    frozen_epochs: int = option("phase 1: only the head trains, on cached backbone features", low=0, high=MAX_EPOCHS)
    frozen_lr: float = option("learning rate of phase 1", low=0, high=10, bounds="(]")
    finetune_epochs: int = option("phase 2: the tail of the backbone and the head", low=0, high=MAX_EPOCHS)
    finetune_lr: float = option("learning rate of phase 2", low=0, high=10, bounds="(]")
    unfreeze: Unfreeze = option("what fine-tuning trains")
    optimization: Optimization = option("how every phase steps")
    augment: bool = option("flip/shift augmentation; the transfer phases draw from `cached_views` cached views")
    cached_views: int = option("augmented views cached per image for the transfer phases", low=1,
                               high=MAX_CACHED_VIEWS)
    train_batchnorm: bool = option("BatchNorm in the unfrozen range updates its statistics (Keras' behaviour)")
    scratch_epochs: int = option("the from-scratch baseline's epoch cap: same architecture, same augmentation",
                                 low=0, high=MAX_EPOCHS)
    scratch_lr: float = option("learning rate of the scratch baseline", low=0, high=10, bounds="(]")
    # benchmarks/bench_scratch_size.py, 3 seeds, scratch's validation accuracy at 64 px (plateau) vs 224 px (20-epoch
    # cap): embedded 59.7 vs 67.3 %, icons 52.8 vs 54.6 %, digits 92.2 vs 90.8 %: no size rule holds, none shrinks it
    scratch_image_size_px: int | None = option("input size of the scratch baseline in px (default: the transfer "
                                               "models')", flag="--scratch-image-size", low=MIN_IMAGE_SIZE_PX,
                                               high=MAX_IMAGE_SIZE_PX)
    scratch_stopping: Stopping = option("when the scratch baseline stops before scratch_epochs")
    final_fit: bool = option("after validation chose, train the kept pipeline again on train + validation")

    def __post_init__(self) -> None:
        for f, value in leaf_values(self):
            check_value(f, value)

    def to_dict(self) -> dict:
        """Flat, as config.json and results.json store it: {'name': ..., 'unfreeze': 'blocks:5', 'optimizer': ...}."""
        return {"name": self.name} | {f.name: str(v) if isinstance(v, Unfreeze) else v for f, v in leaf_values(self)}


def leaf_values(recipe: Recipe) -> Iterator[tuple[Field, Any]]:
    """Every training choice of `recipe` with its field: the parts (Optimization) flattened."""
    for f in fields(Recipe)[1:]:
        if f.type in PARTS:
            yield from ((g, getattr(getattr(recipe, f.name), g.name)) for g in fields(f.type))
        else:
            yield f, getattr(recipe, f.name)


def recipe_fields() -> list[Field]:
    """The fields a user can override, flat: the recipe's own and its parts'; `name` is the preset's."""
    return [g for f in fields(Recipe)[1:] for g in (fields(f.type) if f.type in PARTS else [f])]


def value_type(f: Field) -> type:
    """int for `int | None`, else the annotation itself."""
    return next(a for a in f.type.__args__ if a is not type(None)) if isinstance(f.type, types.UnionType) else f.type


def flag_of(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def check_value(f: Field, value: Any) -> None:
    """One field's value against its declared type and range; the message names the flag."""
    meta, flag = f.metadata, flag_of(f)
    if flag != "--" + f.name.replace("_", "-"):
        flag += f" ({f.name})"  # the API's name too, where the CLI's differs
    if value is None and isinstance(f.type, types.UnionType):  # None: the weights' size, no budget
        return
    kind = value_type(f)
    if kind is Unfreeze:
        if not isinstance(value, Unfreeze):
            raise UserError(f"unfreeze '{value}' is not one of {UNFREEZE_FORMS}")
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{flag} must be true or false (got {value!r})")
        return
    if meta.get("choices"):
        if value not in meta["choices"]:
            raise UserError(f"{flag} must be one of {', '.join(meta['choices'])} (got '{value}')")
        return
    number_ok = not isinstance(value, bool) and (isinstance(value, int) if kind is int
                                                 else isinstance(value, (int, float)) and math.isfinite(value))
    low, high, bounds = meta["low"], meta["high"], meta["bounds"]
    in_range = number_ok and (value >= low if bounds[0] == "[" else value > low) and \
        (value <= high if bounds[1] == "]" else value < high)
    if not in_range:
        what = f"a whole number from {low} to {high}" if kind is int else f"a finite number in {bounds[0]}{low:g}, " \
            f"{high:g}{bounds[1]}"
        raise UserError(f"{flag} must be {what} (got {value!r})")


# Keras' Adam uses eps 1e-7 where PyTorch's uses 1e-8; the seeds' code ran on Keras
KERAS_ADAM = Optimization(optimizer="adam", weight_decay=0.0, adam_eps=1e-7, schedule="constant",
                          label_smoothing=0.0, keep_best_epoch=False)  # Keras' fit() keeps the last epoch
PRESETS = {
    # seed 002, line by line: MobileNetV2 at 224 px, GAP -> Dense(128, relu) -> Dense(n) (no dropout),
    # fit 5 epochs with Adam() (lr 1e-3), then base.layers[:-20] frozen and Adam(1e-5) for 5 epochs,
    # batch 32, no augmentation, the last epoch kept. Keras trains the BatchNorm layers among the last 20.
    "seeds": Recipe(name="seeds", image_size_px=224, head_dropout=0.0, frozen_epochs=5, frozen_lr=1e-3,
                    finetune_epochs=5, finetune_lr=1e-5, unfreeze=Unfreeze("keras", 20), optimization=KERAS_ADAM,
                    augment=False, cached_views=1, train_batchnorm=True, scratch_epochs=10, scratch_lr=1e-3,
                    scratch_image_size_px=None, scratch_stopping=Stopping(),
                    final_fit=False),
    # seed 000: 128 px, Dropout(0.3) in the head, fine_tune_at = 100 of MobileNetV2's 154 Keras layers:
    # the last 54, one of which (block_13_pad) is a ZeroPadding layer that timm folds into the conv: 53 here.
    "seeds-000": Recipe(name="seeds-000", image_size_px=128, head_dropout=0.3, frozen_epochs=5, frozen_lr=1e-3,
                        finetune_epochs=5, finetune_lr=1e-5, unfreeze=Unfreeze("keras", 53), optimization=KERAS_ADAM,
                        augment=False, cached_views=1, train_batchnorm=True, scratch_epochs=10, scratch_lr=1e-3,
                        scratch_image_size_px=None, scratch_stopping=Stopping(),
                        final_fit=False),
}
# The default, chosen on validation from what the field measured on small data (BiT-HyperRule, fastai
# fine_tune, LP-FT): probe the head first (cheap: cached features), then fine-tune the last 5 blocks with
# AdamW at 1e-3 under per-step warm-up + cosine decay (the decay, not a tiny constant rate, protects the
# pretrained filters), label smoothing 0.1, on 4 cached flip/shift views; the best-validation epoch is kept.
# Once validation has chosen, the kept pipeline is trained again on train + validation (the final fit):
# embedded set, fine-tuned test accuracy over seeds 0-2, 78.8 % -> 82.1 % (README, "Recipes").
# Validation accuracy on the embedded set, EfficientNet-Lite0, 10 + 10 epochs: fine-tune lr 1e-4 76.8 %,
# 3e-4 80.0 %, 1e-3 81.2 %; last 3 / 5 / 8 blocks at 1e-4: 78.2 / 76.8 / 77.8 %; at 3e-4, 8 blocks 79.4 %.
# The ablation of each ingredient on three datasets is benchmarks/bench_recipes.py (README, "Recipes").
PRESETS["default"] = Recipe(name="default", image_size_px=None, head_dropout=0.3, frozen_epochs=10, frozen_lr=1e-3,
                            finetune_epochs=10, finetune_lr=1e-3, unfreeze=Unfreeze("blocks", 5),
                            optimization=Optimization(optimizer="adamw", weight_decay=0.05, adam_eps=1e-8,
                                                      schedule="warmup-cosine", label_smoothing=0.1,
                                                      keep_best_epoch=True),
                            augment=True, cached_views=4, train_batchnorm=False, scratch_epochs=20, scratch_lr=1e-3,
                            scratch_image_size_px=None,
                            # scratch stops once 5 epochs gain under half a point of smoothed validation
                            # accuracy, or after the seeds' 30 minutes; the report says which ended it
                            scratch_stopping=Stopping(plateau_patience=GAIN_WINDOW, plateau_min_gain=MIN_GAIN,
                                                      budget_seconds=1800.0),
                            final_fit=True)
# default's half-time sibling: fine-tune 5 epochs on 2 cached views instead of 10 on 4 (embedded set, cold cache,
# 224 px, seed 0: 272 s -> 158 s). Fine-tuned validation accuracy, seeds 0, 1, 2, 42: 81.2, 80.8, 81.4, 80.2 % (default
# at seeds 0 and 42: 81.8, 80.2 %); its final fit's test accuracy 82.0 % on those seeds. On the smallest set
# measured (digits, 384 training images: 60 fine-tune steps) it falls behind: 90.0 vs 98.9 % (README, "Recipes").
PRESETS["fast"] = replace(PRESETS["default"], name="fast", finetune_epochs=5, cached_views=2)


def scratch_size_for(recipe: Recipe) -> int | None:
    """The scratch input size the recipe resolves to: its own when given, else the transfer models'."""
    return recipe.scratch_image_size_px or recipe.image_size_px


def resolve_recipe(name: str, overrides: dict, exact: bool = False) -> Recipe:
    """The preset with the overrides (flat field names, e.g. from the CLI) applied; an unknown name lists the
    presets. An unfreeze may be given as text ('blocks:5'). None means "the preset's" unless `exact` (a stored
    config.json, where None is a value: no budget, the weights' own size)."""
    if name not in PRESETS:
        raise UserError(f"--recipe '{name}' is unknown; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    given = {f.name: overrides[f.name] for f in recipe_fields()
             if f.name in overrides and (exact or overrides[f.name] is not None)}
    if isinstance(given.get("unfreeze"), str):
        given["unfreeze"] = Unfreeze.parse(given["unfreeze"])
    for f in fields(Recipe):
        if f.type in PARTS:
            part = {g.name: given.pop(g.name) for g in fields(f.type) if g.name in given}
            given[f.name] = replace(getattr(preset, f.name), **part)
    return replace(preset, **given)


def overridden_fields(recipe: Recipe) -> list[str]:
    """The fields where `recipe` differs from its preset, as the report names them."""
    preset = PRESETS[recipe.name].to_dict()
    return sorted(k for k, v in recipe.to_dict().items() if v != preset[k])
