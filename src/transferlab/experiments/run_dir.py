"""A run directory holds everything one experiment produced; reports are rebuilt from it alone."""

import io
import json
import platform
import re
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from transferlab.atomic import check_creatable, creatable_problem, write_bytes_atomic
from transferlab.errors import UserError, error_text, quoted
from transferlab.options import default_cache_dir
from transferlab.models.weights import WeightsSource
from transferlab.training.loop import PhaseState

VERSIONED_PACKAGES = ("transferlab", "torch", "torchvision", "timm", "numpy", "pillow")


def check_output_folders(cfg) -> None:
    """The runs folder and the cache (given, or the default under $XDG_CACHE_HOME or ~/.cache) can be written,
    checked before a run or study folder is made: an unwritable HOME is one line, not a traceback mid-run."""
    problem = creatable_problem(cfg.runs_dir)
    if problem is not None:
        raise UserError(f"cannot create a run folder in {quoted(cfg.runs_dir)} ({problem}); choose a writable "
                        "--runs-dir")
    cache_dir = Path(cfg.cache_dir or default_cache_dir()).expanduser()
    if not cache_dir.is_dir():  # an existing read-only cache is read (data/row_store.py); a missing one is made
        check_creatable(cache_dir, "--cache-dir" if cfg.cache_dir else
                        "the default cache folder (under $XDG_CACHE_HOME or $HOME; choose one with --cache-dir)")


NAME_BYTES = 200  # of a component's 255 bytes, with room for the timestamp, "study-" and a "-2" suffix


def safe_name(name: str) -> str:
    """Turn a user's label (class or run name) into one path component: no separators, no '..', and short
    enough in bytes (80 CJK characters are 240 bytes: a folder name the file system refused)."""
    cleaned = re.sub(r"[^\w.\- ]+", "_", name, flags=re.UNICODE).strip(" .")
    cleaned = cleaned.encode()[:NAME_BYTES].decode(errors="ignore").strip(" .")  # cut on a character's edge
    return cleaned or "unnamed"


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """A fresh folder; two runs started in the same second get -2, -3… (mkdir is the atomic claim)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        for suffix in range(1, 1000):
            path = Path(runs_dir) / (f"{stamp}-{safe_name(name)}" + (f"-{suffix}" if suffix > 1 else ""))
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as e:
        raise UserError(f"cannot create a run folder in '{runs_dir}' ({e.strerror}); choose a writable "
                        "--runs-dir") from None
    raise UserError(f"too many runs named '{name}' this second in '{runs_dir}'; give another --name")


def environment(device: torch.device, weights: WeightsSource) -> dict:
    """What the numbers depend on besides the config: CPU results vary with the thread count."""
    return {"weights": {"kind": weights.kind, "location": weights.location, "fingerprint": weights.fingerprint},
            "versions": {name: _version(name) for name in VERSIONED_PACKAGES} | {"python": platform.python_version()},
            "torch_threads": torch.get_num_threads(), "device": str(device), "machine": platform.machine()}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # e.g. transferlab run from a source checkout without `pip install`
        return "not installed"


def read_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    try:
        stored = json.loads(path.read_bytes())  # UTF-8 whatever the locale
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
        return stored
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read run config '{path}' ({e}); is this a transferlab run folder?") from None


CHECKPOINTS_DIR = "checkpoints"  # in a run folder, and in its final fit's


def checkpoint_path(run_dir: Path, phase: str) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"{phase}.pt"


def save_checkpoint(run_dir: Path, phase: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: PhaseState, changing: set[str]) -> None:
    """What the phase can change (`changing` state_dict keys) and its progress: everything else is the
    pretrained weights and the earlier phases, rebuilt on resume. Tensors and plain values only, so loading
    needs no pickle that can run code."""
    def only_changing(tensors: dict | None) -> dict | None:
        return None if tensors is None else {k: v for k, v in tensors.items() if k in changing}
    payload = {"module": only_changing(module.state_dict()), "optimizer": optimizer.state_dict(),
               "best_state": only_changing(state.best_state),
               "state": {"next_epoch": state.next_epoch, "history": json.dumps(state.history),
                         "best_epoch": state.best_epoch, "best_val_acc": state.best_val_acc}}
    buffer = io.BytesIO()  # serialised in memory: a full disk then fails as a plain OSError naming the file
    torch.save(payload, buffer)
    write_bytes_atomic(checkpoint_path(run_dir, phase), buffer.getvalue())


def load_checkpoint(run_dir: Path, phase: str, module: torch.nn.Module, changing: set[str]
                    ) -> tuple[dict, PhaseState] | None:
    """Loads the phase's saved entries into `module`: (optimizer state, phase state with the full kept
    state), or None if this phase never finished an epoch. The entries must be exactly what the phase changes
    (`changing`): another phase's checkpoint under this name would load, then fail in the optimizer."""
    path = checkpoint_path(run_dir, phase)
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        unexpected = module.load_state_dict(payload["module"], strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{len(unexpected)} entries this model does not have, e.g. {unexpected[0]}")
        if set(payload["module"]) != changing:
            raise ValueError(f"it holds {len(payload['module'])} entries where this phase changes {len(changing)}")
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"checkpoint {quoted(path)} cannot be read ({error_text(e, 100)}); delete it to redo the "
                        f"{phase} phase") from None
    s = payload["state"]
    state = PhaseState(next_epoch=s["next_epoch"], history=json.loads(s["history"]),
                       best_epoch=s["best_epoch"], best_val_acc=s["best_val_acc"],
                       best_state=None if payload["best_state"] is None else
                       {k: v.detach().clone() for k, v in module.state_dict().items()} | payload["best_state"])
    return payload["optimizer"], state
