"""Validation images that also sit in training (same bytes, or the same picture re-encoded/resized).

Leakage makes validation accuracy a lie; we count it, warn, and with --dedupe drop those validation
images before the split is frozen.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from transferlab.data.row_store import RowView

# dHash bits that may differ for two images to count as the same picture: 64-bit hash, <= 3 bits.
NEAR_DUPLICATE_MAX_BITS = 3
CHUNK = 1024


def dhash(pixels: np.ndarray) -> np.uint64:
    """Difference hash: 9x8 greyscale, one bit per horizontal gradient sign. Survives resizing/re-encoding."""
    small = np.asarray(Image.fromarray(pixels).convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).reshape(-1)
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


def dhashes(pixels: RowView) -> np.ndarray:
    return np.array([dhash(pixels[np.array([i])][0]) for i in range(len(pixels))], dtype=np.uint64)


@dataclass(frozen=True)
class Leakage:
    exact: list[int]  # validation positions whose file content equals a training file's
    near: list[int]   # other validation positions within NEAR_DUPLICATE_MAX_BITS of a training image

    @property
    def all(self) -> list[int]:
        return sorted(self.exact + self.near)


def find_leakage(train_keys: list[str], train_pixels: RowView, val_keys: list[str], val_pixels: RowView) -> Leakage:
    train_set = set(train_keys)
    exact = [i for i, k in enumerate(val_keys) if k in train_set]
    train_hashes, val_hashes = dhashes(train_pixels), dhashes(val_pixels)
    near = []
    for start in range(0, len(val_hashes), CHUNK):
        block = val_hashes[start:start + CHUNK]
        distances = np.bitwise_count(block[:, None] ^ train_hashes[None, :])
        close = (distances <= NEAR_DUPLICATE_MAX_BITS).any(axis=1) if len(train_hashes) else np.zeros(len(block), bool)
        near += [start + int(i) for i in np.flatnonzero(close) if start + int(i) not in set(exact)]
    return Leakage(exact=exact, near=near)
