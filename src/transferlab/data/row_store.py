"""A content-addressed on-disk table of equally shaped arrays: one row per image content hash.

Used for decoded pixels, pooled backbone features and activations at a fine-tuning cut. Rows are
appended for images not seen before, so a second run, a sweep or a subset study only computes what is
new. The array lives in a .npy file read through a memory map; its index (keys, shape, dtype, checksum)
lives in a JSON file written last, so a half-written cache is never taken for a whole one.
"""

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from transferlab.atomic import write_atomic, write_json_atomic

CHUNK_BYTES = 64 << 20


def file_digest(path: Path) -> str:
    """Content hash of an image file: renames and moves keep the cache, any edited byte invalidates."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _array_digest(array: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    flat = array.reshape(-1).view(np.uint8)
    for start in range(0, flat.size, CHUNK_BYTES):
        h.update(flat[start:start + CHUNK_BYTES])
    return h.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to a temp name
        np.save(f, array, allow_pickle=False)


def key_digest(*parts: object) -> str:
    """A short folder name for a cache that depends on all of `parts` (model, weights, preprocessing…)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


class RowStore:
    """Rows of shape `row_shape` and `dtype` under `directory`, looked up by string key."""

    def __init__(self, directory: Path, row_shape: tuple[int, ...], dtype: str):
        self.directory = Path(directory)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self._rows_path = self.directory / "rows.npy"
        self._index_path = self.directory / "index.json"
        self._rows, self._row_of = self._open()

    def _open(self) -> tuple[np.ndarray, dict[str, int]]:
        empty = np.zeros((0, *self.row_shape), self.dtype)
        if not self._index_path.exists():
            return empty, {}
        try:
            index = json.loads(self._index_path.read_text())
            rows = np.load(self._rows_path, mmap_mode="r")
            if (tuple(rows.shape) != (len(index["keys"]), *self.row_shape) or rows.dtype != self.dtype
                    or _array_digest(rows) != index["checksum"]):
                raise ValueError("contents do not match the index checksum")
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            warnings.warn(f"cache {self.directory} is corrupt ({e}); rebuilding it", stacklevel=3)
            self._index_path.unlink(missing_ok=True)
            self._rows_path.unlink(missing_ok=True)
            return empty, {}
        return rows, {k: i for i, k in enumerate(index["keys"])}

    def __len__(self) -> int:
        return len(self._row_of)

    def missing(self, keys: list[str]) -> list[str]:
        return list(dict.fromkeys(k for k in keys if k not in self._row_of))

    def add(self, keys: list[str], rows: np.ndarray) -> None:
        if not keys:
            return
        rows = np.asarray(rows, dtype=self.dtype)
        merged = np.concatenate([np.asarray(self._rows), rows]) if len(self._row_of) else rows
        all_keys = list(self._row_of) + list(keys)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index_path.unlink(missing_ok=True)  # an index without matching rows must never survive
        write_atomic(self._rows_path, lambda tmp: _save_npy(tmp, merged))
        write_json_atomic(self._index_path, {"keys": all_keys, "row_shape": list(self.row_shape),
                                             "dtype": self.dtype.name, "checksum": _array_digest(merged)})
        self._rows, self._row_of = self._open()

    def rows(self, keys: list[str]) -> "RowView":
        return RowView(self._rows, np.array([self._row_of[k] for k in keys], dtype=np.int64))


class RowView:
    """The rows for one list of keys, gathered per batch from the memory map (never all at once)."""

    def __init__(self, array: np.ndarray, row_indices: np.ndarray):
        self.array = array
        self.row_indices = row_indices

    def __len__(self) -> int:
        return len(self.row_indices)

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        rows = self.row_indices[positions]
        order = np.argsort(rows)  # sequential reads from the memory map
        out = np.empty((len(rows), *self.array.shape[1:]), self.array.dtype)
        out[order] = self.array[rows[order]]
        return out
