"""A run directory holds everything one experiment produced; reports are rebuilt from it alone."""

import json
import os
import re
from datetime import datetime
from pathlib import Path

import torch

from transferlab.atomic import write_atomic
from transferlab.errors import UserError
from transferlab.training.loop import PhaseState


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "transferlab"


def safe_name(name: str) -> str:
    """Turn a user's label (class or run name) into one path component: no separators, no '..'."""
    cleaned = re.sub(r"[^\w.\- ]+", "_", name, flags=re.UNICODE).strip(" .")
    return cleaned or "unnamed"


def new_run_dir(runs_dir: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(runs_dir) / f"{stamp}-{safe_name(name)}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(runs_dir) / f"{stamp}-{safe_name(name)}-{suffix}"
    path.mkdir(parents=True)
    return path


def checkpoint_path(run_dir: Path, phase: str) -> Path:
    return Path(run_dir) / "checkpoints" / f"{phase}.pt"


def save_checkpoint(run_dir: Path, phase: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: PhaseState) -> None:
    """Tensors and plain values only, so loading needs no pickle that can run code."""
    payload = {"module": module.state_dict(), "optimizer": optimizer.state_dict(),
               "best_state": state.best_state,
               "state": {"next_epoch": state.next_epoch, "history": json.dumps(state.history),
                         "best_epoch": state.best_epoch, "best_val_acc": state.best_val_acc}}
    write_atomic(checkpoint_path(run_dir, phase), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(run_dir: Path, phase: str) -> tuple[dict, dict, PhaseState] | None:
    """(module state, optimizer state, phase state), or None if this phase never finished an epoch."""
    path = checkpoint_path(run_dir, phase)
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"checkpoint '{path}' cannot be read ({str(e)[:100]}); delete it to redo the "
                        f"{phase} phase") from None
    s = payload["state"]
    state = PhaseState(next_epoch=s["next_epoch"], history=json.loads(s["history"]),
                       best_epoch=s["best_epoch"], best_val_acc=s["best_val_acc"],
                       best_state=payload["best_state"])
    return payload["module"], payload["optimizer"], state
