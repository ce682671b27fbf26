"""What a phase feeds its module, batch by batch: normalised images, or cached prefix outputs.

Every source is deterministic in (positions, epoch), so a resumed run sees the same batches.
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from transferlab.data.images import Preprocessing
from transferlab.data.row_store import RowView

MAX_SHIFT_FRACTION = 0.125


class Inputs(Protocol):
    """A phase's input source: batches by position, deterministic in (positions, epoch)."""

    def __len__(self) -> int: ...
    def batch(self, positions: np.ndarray, epoch: int) -> torch.Tensor: ...


def augment_pixels(pixels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Light, label-safe augmentation on uint8 NHWC: horizontal flip and a shift of up to 1/8.

    Kept by hand rather than torchvision.transforms.v2 (RandomHorizontalFlip + RandomCrop(padding, "edge")):
    v2 draws one set of parameters per call from torch's global generator, so per-image draws that a resumed
    run reproduces from (seed, epoch) alone would need one call per image inside a reseeded global RNG."""
    n, h, w, _ = pixels.shape
    out = pixels.clone()
    flips = rng.random(n) < 0.5
    out[flips] = out[flips].flip(2)
    max_shift = int(h * MAX_SHIFT_FRACTION)
    padded = torch.nn.functional.pad(out.permute(0, 3, 1, 2).float(), [max_shift] * 4, mode="replicate")
    shifts = rng.integers(0, 2 * max_shift + 1, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):
        out[i] = padded[i, :, dy:dy + h, dx:dx + w].permute(1, 2, 0).to(torch.uint8)
    return out


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


@dataclass
class ImageInputs:
    """uint8 pixels from the decode cache -> normalised float NCHW (channels_last) on `device`."""

    pixels: RowView
    prep: Preprocessing
    device: torch.device
    augment_seed: int | None = None  # None: no augmentation (validation, feature extraction)

    def __len__(self) -> int:
        return len(self.pixels)

    def batch(self, positions: np.ndarray, epoch: int) -> torch.Tensor:
        x = torch.from_numpy(self.pixels[positions])
        if self.augment_seed is not None:
            x = augment_pixels(x, epoch_rng(self.augment_seed, epoch, int(positions[0])))
        return normalise(x.to(self.device, non_blocking=True), self.prep)


def normalise(pixels_nhwc: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    return normalise_by(pixels_nhwc, *normalisation(prep, pixels_nhwc.device))


def normalisation(prep: Preprocessing, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the weights in pixel units, shaped to broadcast over NCHW."""
    return (torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255,
            torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255)


def normalise_by(pixels_nhwc: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, channels_last (the permute alone already has its strides)."""
    x = pixels_nhwc.permute(0, 3, 1, 2).float()
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@dataclass
class CachedInputs:
    """Cached prefix outputs; with K augmented views, each (image, epoch) draws one view."""

    views: list[RowView]  # K views of the same images, K = 1 without augmentation
    device: torch.device
    seed: int = 0

    def __len__(self) -> int:
        return len(self.views[0])

    def batch(self, positions: np.ndarray, epoch: int) -> torch.Tensor:
        if len(self.views) == 1:
            rows = self.views[0][positions]
        else:
            choice = epoch_rng(self.seed, epoch, 1).integers(0, len(self.views), size=len(self.views[0]))
            rows = np.stack([self.views[choice[p]][np.array([p])][0] for p in positions])
        x = torch.from_numpy(rows).to(self.device, non_blocking=True).float()
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
