"""Validation images that also sit in training (same bytes, or the same picture re-encoded/resized).

Leakage makes validation accuracy a lie; we count it, warn, and with --dedupe drop those validation
images before the split is frozen. Near copies are found in two stages: a difference hash proposes
candidates cheaply, then a small thumbnail comparison confirms them. The hash alone is too coarse for
small, centred objects (different garments share a hash), which would flag honest validation images.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from transferlab.data.row_store import RowView

HASH_CANDIDATE_MAX_BITS = 8     # of 64 dHash bits: generous, the thumbnail check decides
THUMBNAIL_PX = 32
THUMBNAIL_MAX_MEAN_DIFF = 6.0   # grey levels of 255: JPEG re-encoding or resizing stays within ~1-4
CHUNK = 1024
REDUCING_GAP = 2.0  # Pillow: box-reduce first, then resample; "indistinguishable" from a full resample, 2.5x faster


def _signature(pixels: np.ndarray) -> tuple[np.uint64, np.ndarray]:
    grey = Image.fromarray(pixels).convert("L")
    small = np.asarray(grey.resize((9, 8), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP), dtype=np.int16)
    bits = np.packbits(small[:, 1:] > small[:, :-1])  # 64 bits, first pixel pair most significant
    thumbnail = np.asarray(grey.resize((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.BILINEAR,
                                       reducing_gap=REDUCING_GAP), dtype=np.float32)
    return np.uint64(int.from_bytes(bits.tobytes(), "big")), thumbnail


def signatures(pixels: RowView) -> tuple[np.ndarray, np.ndarray]:
    """(dHash per image, THUMBNAIL_PX² grey thumbnail per image)."""
    pairs = [_signature(pixels[np.array([i])][0]) for i in range(len(pixels))]
    hashes = np.array([h for h, _ in pairs], dtype=np.uint64)
    thumbs = np.stack([t for _, t in pairs]) if pairs else np.zeros((0, THUMBNAIL_PX, THUMBNAIL_PX), np.float32)
    return hashes, thumbs


@dataclass(frozen=True)
class Leakage:
    exact: list[int]  # validation positions whose file content equals a training file's
    near: list[int]   # other validation positions that are a re-encoded/resized training image

    @property
    def all(self) -> list[int]:
        return sorted(self.exact + self.near)


def find_leakage(train_keys: list[str], train_pixels: RowView, val_keys: list[str], val_pixels: RowView) -> Leakage:
    train_set = set(train_keys)
    exact = [i for i, k in enumerate(val_keys) if k in train_set]
    exact_set = set(exact)
    train_hashes, train_thumbs = signatures(train_pixels)
    val_hashes, val_thumbs = signatures(val_pixels)
    near = []
    for start in range(0, len(val_hashes) if len(train_hashes) else 0, CHUNK):
        distances = np.bitwise_count(val_hashes[start:start + CHUNK, None] ^ train_hashes[None, :])
        for offset, candidates in enumerate(distances <= HASH_CANDIDATE_MAX_BITS):
            i = start + offset
            if i in exact_set or not candidates.any():
                continue
            diffs = np.abs(train_thumbs[candidates] - val_thumbs[i]).mean(axis=(1, 2))
            if diffs.min() <= THUMBNAIL_MAX_MEAN_DIFF:
                near.append(i)
    return Leakage(exact=exact, near=near)
