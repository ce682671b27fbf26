"""A content-addressed on-disk table of equally shaped arrays: one row per image content hash.

Used for decoded pixels, pooled backbone features and activations at a fine-tuning cut. Rows are
appended for images not seen before, so a second run, a sweep or a subset study only computes what is
new. Rows live in a raw file read through a memory map; the index (keys, shape, dtype, a checksum per
appended segment) is written atomically after the rows are on disk, so rows that a crash left without
an index are cut off, and a corrupt file is detected and rebuilt, never used.
"""

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from transferlab.atomic import write_json_atomic

CHUNK_BYTES = 64 << 20


def file_digest(path: Path) -> str:
    """Content hash of an image file: renames and moves keep the cache, any edited byte invalidates."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def key_digest(*parts: object) -> str:
    """A short folder name for a cache that depends on all of `parts` (model, weights, preprocessing…)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _segment_digest(f, n_bytes: int) -> str:
    """Read (not memory-map) so that checking a large cache does not count towards resident memory."""
    h = hashlib.blake2b(digest_size=16)
    while n_bytes > 0:
        chunk = f.read(min(CHUNK_BYTES, n_bytes))
        if not chunk:
            raise ValueError("file is shorter than its index says")
        h.update(chunk)
        n_bytes -= len(chunk)
    return h.hexdigest()


class RowStore:
    """Rows of shape `row_shape` and `dtype` under `directory`, looked up by string key."""

    def __init__(self, directory: Path, row_shape: tuple[int, ...], dtype: str):
        self.directory = Path(directory)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self._rows_path = self.directory / "rows.bin"
        self._index_path = self.directory / "index.json"
        self._segments: list[dict] = []
        self._rows, self._row_of = self._open()

    def _open(self) -> tuple[np.ndarray, dict[str, int]]:
        empty = np.zeros((0, *self.row_shape), self.dtype)
        if not self._index_path.exists():
            self._segments = []
            self._rows_path.unlink(missing_ok=True)
            return empty, {}
        try:
            index = json.loads(self._index_path.read_text())
            if tuple(index["row_shape"]) != self.row_shape or index["dtype"] != self.dtype.name:
                raise ValueError("row shape or dtype differ from the index")
            n_rows = len(index["keys"])
            if sum(s["rows"] for s in index["segments"]) != n_rows:
                raise ValueError("segments do not add up to the keys")
            with open(self._rows_path, "r+b") as f:
                for segment in index["segments"]:
                    if _segment_digest(f, segment["rows"] * self.row_bytes) != segment["checksum"]:
                        raise ValueError("contents do not match the index checksum")
                f.truncate(n_rows * self.row_bytes)  # rows appended by a run that died before its index
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            warnings.warn(f"cache {self.directory} is corrupt ({e}); rebuilding it", stacklevel=3)
            self._index_path.unlink(missing_ok=True)
            self._rows_path.unlink(missing_ok=True)
            self._segments = []
            return empty, {}
        self._segments = index["segments"]
        rows = MappedRows(self._rows_path, self.dtype, (n_rows, *self.row_shape)) if n_rows else empty
        return rows, {k: i for i, k in enumerate(index["keys"])}

    def __len__(self) -> int:
        return len(self._row_of)

    def missing(self, keys: list[str]) -> list[str]:
        return list(dict.fromkeys(k for k in keys if k not in self._row_of))

    def add(self, keys: list[str], rows: np.ndarray) -> None:
        self.append([(keys, rows)])

    def append(self, chunks: Iterable[tuple[list[str], np.ndarray]]) -> None:
        """Stream (keys, rows) chunks to disk: memory holds one chunk, never the whole table."""
        new_keys: list[str] = []
        h = hashlib.blake2b(digest_size=16)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._rows = None  # drop the read-only map before writing to the file
        with open(self._rows_path, "ab") as f:
            for keys, rows in chunks:
                data = np.ascontiguousarray(rows, dtype=self.dtype)
                if data.shape != (len(keys), *self.row_shape):
                    raise ValueError(f"rows of shape {data.shape} for {len(keys)} keys of {self.row_shape}")
                f.write(memoryview(data).cast("B"))
                h.update(memoryview(data).cast("B"))
                new_keys += keys
            f.flush()
            os.fsync(f.fileno())
        if new_keys:
            segments = self._segments + [{"rows": len(new_keys), "checksum": h.hexdigest()}]
            write_json_atomic(self._index_path, {"keys": list(self._row_of) + new_keys,
                                                 "row_shape": list(self.row_shape), "dtype": self.dtype.name,
                                                 "segments": segments})
        self._rows, self._row_of = self._open()

    def rows(self, keys: list[str]) -> "RowView":
        return RowView(self._rows, np.array([self._row_of[k] for k in keys], dtype=np.int64))


class MappedRows:
    """Rows in a file, memory-mapped for each read only: pages read for one batch leave the process with
    it, so resident memory stays at a batch, not the whole file (10,000 images at 224 px are 1.4 GB)."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape = path, dtype, shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        mapped = np.memmap(self.path, self.dtype, mode="r", shape=self.shape)
        batch = np.array(mapped[rows])
        del mapped  # the last reference: the mapping and its resident pages go now
        return batch


class RowView:
    """The rows for one list of keys, gathered per batch from the memory map (never all at once)."""

    def __init__(self, array: np.ndarray, row_indices: np.ndarray):
        self.array = array
        self.row_indices = row_indices

    def __len__(self) -> int:
        return len(self.row_indices)

    def subset(self, positions: np.ndarray) -> "RowView":
        return RowView(self.array, self.row_indices[positions])

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        rows = self.row_indices[positions]
        order = np.argsort(rows)  # sequential reads from the memory map
        out = np.empty((len(rows), *self.array.shape[1:]), self.array.dtype)
        out[order] = self.array[rows[order]]
        return out
