"""A content-addressed on-disk table of equally shaped arrays: one row per image content hash.

Used for decoded pixels, pooled backbone features and activations at a fine-tuning cut. Rows are
appended for images not seen before, so a second run, a sweep or a subset study only computes what is
new. Several processes may share one store, so:
- each append is one immutable segment file, written aside and published by an atomic rename; no
  published file is ever truncated, rewritten or appended to;
- the index (the keys and checksum of each segment) is replaced atomically under a file lock, after
  re-reading it, so two writers merge their segments instead of overwriting each other's;
- readers modify nothing and hold every segment open, so what they read never changes under them even
  if another process replaces the store;
- only a checksum (or an unparseable index) makes a segment corrupt: it is dropped from the index and
  its rows computed again; a bug in the caller stays a traceback and deletes nothing.
A read-only cache is used as it is: rows it lacks are computed and kept in memory for this run.
"""

import errno
import itertools
import json
import mmap
import os
import re
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from filelock import FileLock

from transferlab.atomic import write_json_atomic
from transferlab.data.fingerprints import fd_digest_once, remember_digest, content_hasher

INDEX_FORMAT = 2
STALE_TEMP_SECONDS = 24 * 3600  # a segment still being written is touched far more often than this
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
SEGMENT_NAME = re.compile(r"seg-[0-9a-f]{32}\.bin")

_WARNED_READ_ONLY: set[Path] = set()  # read-only folders already warned about, per process


@dataclass(frozen=True)
class Segment:
    """One entry of the index: a file of len(keys) rows, in the order of `keys`."""

    file: str
    keys: tuple[str, ...]
    checksum: str


class CorruptIndex(Exception):
    """index.json exists but is not an index this code wrote."""


def _parse_index(text: str) -> tuple[tuple[int, ...], str, list[Segment]]:
    try:
        index = json.loads(text)
        if index["format"] != INDEX_FORMAT:
            raise CorruptIndex(f"format {index['format']!r}, not {INDEX_FORMAT}")
        segments = [Segment(s["file"], tuple(s["keys"]), s["checksum"]) for s in index["segments"]]
        row_shape, dtype = tuple(int(n) for n in index["row_shape"]), str(index["dtype"])
    except (ValueError, KeyError, TypeError) as e:  # a JSON document, but not ours (or cut short)
        raise CorruptIndex(f"unparseable index: {type(e).__name__}: {e}") from None
    for s in segments:
        if not SEGMENT_NAME.fullmatch(s.file) or not all(isinstance(k, str) for k in s.keys):
            raise CorruptIndex(f"unparseable index: bad segment entry {s.file!r}")
    return row_shape, dtype, segments


def _unwritable_root(directory: Path) -> Path:
    """The highest folder above `directory` that cannot be written: one warning covers every store in it."""
    path = next(p for p in (directory, *directory.parents) if p.exists())
    while path.parent != path and not os.access(path.parent, os.W_OK):
        path = path.parent
    return path


class RowStore:
    """Rows of shape `row_shape` and `dtype` under `directory`, looked up by string key."""

    def __init__(self, directory: Path, row_shape: tuple[int, ...], dtype: str):
        self.directory = Path(directory)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self._index_path = self.directory / "index.json"
        self._open: dict[str, MappedSegment] = {}  # segments this store has verified and holds open
        self._corrupt: set[str] = set()             # segment files whose checksum failed: to drop
        self._in_memory: list[tuple[list[str], np.ndarray]] = []  # rows a read-only cache could not keep
        self.is_read_only = False
        self._load()

    def _read_index(self) -> list[Segment]:
        """The published segments; raises CorruptIndex. A different shape or dtype is a bug, not corruption:
        the folder name of every store includes what decides them."""
        try:
            text = self._index_path.read_text()
        except FileNotFoundError:
            return []
        row_shape, dtype, segments = _parse_index(text)
        if row_shape != self.row_shape or dtype != self.dtype.name:
            raise ValueError(f"cache {self.directory} holds rows of {row_shape} {dtype}, not {self.row_shape} "
                             f"{self.dtype.name}: its folder name should differ")
        return segments

    def _warn_corrupt(self, what: str) -> None:
        warnings.warn(f"cache {self.directory} is corrupt ({what}); its rows will be computed again")

    def _open_segment(self, segment: Segment) -> "MappedSegment | None":
        """The segment held open if its size and checksum match the index; None if it is missing/corrupt."""
        try:
            fd = os.open(self.directory / segment.file, os.O_RDONLY)
        except FileNotFoundError:
            return None
        mapped = MappedSegment(fd, len(segment.keys), self.row_shape, self.dtype)
        if os.fstat(fd).st_size != len(segment.keys) * self.row_bytes:
            self._warn_corrupt(f"{segment.file} has another size than its index says")
        elif fd_digest_once(fd) != segment.checksum:
            self._warn_corrupt(f"{segment.file} does not match its checksum")
        else:
            return mapped
        self._corrupt.add(segment.file)
        return None

    def _load(self) -> None:
        """Read the index and hold its segments open; opening a store never writes anything."""
        try:
            segments = self._read_index()
        except CorruptIndex as e:
            self._warn_corrupt(str(e))
            segments = []
        held: dict[str, MappedSegment] = {}
        for segment in segments:
            if segment.file in self._corrupt:
                continue
            mapped = self._open.get(segment.file) or self._open_segment(segment)
            if mapped is not None:
                held[segment.file] = mapped
            elif segment.file not in self._corrupt:  # no such file
                if not self._index_changed_since(segments):
                    self._warn_corrupt(f"{segment.file} is missing")
                    self._corrupt.add(segment.file)
                return self._load()  # or a writer dropped it after we read the index: read it again
        self._open = held
        kept = [s for s in segments if s.file in held]
        parts = [held[s.file] for s in kept] + [rows for _, rows in self._in_memory]
        keys = [s.keys for s in kept] + [keys for keys, _ in self._in_memory]
        self._rows = MappedRows(parts, self.row_shape, self.dtype)
        self._row_of: dict[str, int] = {}
        for row, key in enumerate(itertools.chain.from_iterable(keys)):
            self._row_of.setdefault(key, row)

    def _index_changed_since(self, segments: list[Segment]) -> bool:
        try:
            return self._read_index() != segments
        except CorruptIndex:
            return True

    def __len__(self) -> int:
        return len(self._row_of)

    def missing(self, keys: list[str]) -> list[str]:
        return list(dict.fromkeys(k for k in keys if k not in self._row_of))

    def add(self, keys: list[str], rows: np.ndarray) -> None:
        self.append([(keys, rows)])

    def _new_rows(self, chunks: Iterable[tuple[list[str], np.ndarray]]) -> Iterator[tuple[list[str], np.ndarray]]:
        """The rows of keys the store lacks (first occurrence), chunk by chunk; empty chunks are dropped."""
        seen = set(self._row_of)
        for keys, rows in chunks:
            data = np.ascontiguousarray(rows, dtype=self.dtype)
            if data.shape != (len(keys), *self.row_shape):
                raise ValueError(f"rows of shape {data.shape} for {len(keys)} keys of {self.row_shape}")
            keep = []
            for i, key in enumerate(keys):
                if key not in seen:
                    seen.add(key)
                    keep.append(i)
            if keep:
                yield [keys[i] for i in keep], data[keep]

    def append(self, chunks: Iterable[tuple[list[str], np.ndarray]]) -> None:
        """Stream (keys, rows) chunks into a new segment: memory holds one chunk, never the whole table.

        Keys the store has are skipped; with nothing new, nothing is written (not even the index).
        """
        new_rows = self._new_rows(chunks)
        first = next(new_rows, None)
        if first is None:
            return
        new_rows = itertools.chain([first], new_rows)
        temp = None if self.is_read_only else self._create_temp()
        if temp is None:
            self._keep_in_memory(new_rows)
            return
        try:
            segment = self._write_segment(temp, new_rows)
            self._publish(temp, segment)
        except OSError as e:
            if e.filename is None:  # a failed write() names no file; the user needs to know which disk
                raise OSError(e.errno, e.strerror, str(self.directory)) from e
            raise
        finally:
            temp.unlink(missing_ok=True)
        self._load()

    def _create_temp(self) -> Path | None:
        """A temp file beside the segments, or None (and one warning) if the cache cannot be written."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temp = self.directory / f".seg-{os.urandom(16).hex()}.tmp"
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies: a shared cache
        except OSError as e:
            if e.errno not in READ_ONLY_ERRNOS:
                raise
            self.is_read_only = True
            root = _unwritable_root(self.directory)
            if root not in _WARNED_READ_ONLY:
                _WARNED_READ_ONLY.add(root)
                warnings.warn(f"cache {root} is read-only ({e.strerror}); what it lacks is computed for this run "
                              "and not saved")
            return None
        return temp

    def _keep_in_memory(self, new_rows: Iterable[tuple[list[str], np.ndarray]]) -> None:
        chunks = list(new_rows)
        self._in_memory.append(([k for keys, _ in chunks for k in keys], np.concatenate([r for _, r in chunks])))
        self._load()

    def _write_segment(self, temp: Path, new_rows: Iterable[tuple[list[str], np.ndarray]]) -> Segment:
        keys: list[str] = []
        h = content_hasher()
        with open(temp, "wb") as f:
            for chunk_keys, rows in new_rows:
                f.write(memoryview(rows).cast("B"))
                h.update(memoryview(rows).cast("B"))
                keys += chunk_keys
            f.flush()
            os.fsync(f.fileno())
            remember_digest(f.fileno(), h.hexdigest())  # the writer has just read every byte
        return Segment(f"seg{temp.name[4:-4]}.bin", tuple(keys), h.hexdigest())  # .seg-X.tmp -> seg-X.bin

    def _publish(self, temp: Path, segment: Segment) -> None:
        """Under the lock: re-read the index, drop corrupt segments, add ours if it brings a new key."""
        with FileLock(self.directory / ".lock"):
            try:
                published = self._read_index()
            except CorruptIndex:
                published = []  # already warned about on open; replaced now
            kept = [s for s in published if s.file not in self._corrupt and (self.directory / s.file).exists()]
            present = {k for s in kept for k in s.keys}
            final = self.directory / segment.file
            if any(k not in present for k in segment.keys):
                os.replace(temp, final)
                kept.append(segment)
            try:
                if kept != published:
                    write_json_atomic(self._index_path, {
                        "format": INDEX_FORMAT, "row_shape": list(self.row_shape), "dtype": self.dtype.name,
                        "segments": [{"file": s.file, "keys": list(s.keys), "checksum": s.checksum} for s in kept]})
            except BaseException:
                final.unlink(missing_ok=True)
                raise
            self._remove_unreferenced({s.file for s in kept})

    def _remove_unreferenced(self, referenced: set[str]) -> None:
        """Segments no index names (dropped as corrupt, or a writer died before its index) and stale temp files.

        Unlinking leaves a reader that holds the file open reading exactly what it read before.
        """
        for path in self.directory.iterdir():
            name = path.name
            try:
                if (SEGMENT_NAME.fullmatch(name) and name not in referenced) or (
                        name.startswith(".") and name.endswith(".tmp")
                        and time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS):
                    path.unlink()
            except FileNotFoundError:  # a writer's temp file, renamed or removed meanwhile
                pass

    def rows(self, keys: list[str]) -> "RowView":
        return RowView(self._rows, np.array([self._row_of[k] for k in keys], dtype=np.int64))


class MappedSegment:
    """One segment file, held open and memory-mapped for each read only: pages read for one batch leave
    the process with it, so resident memory stays at a batch, not the whole file (10,000 images at 224 px
    are 1.4 GB). The open descriptor, not the path, is what is mapped: the rows never change under a
    reader, even if another process drops or replaces the file."""

    def __init__(self, fd: int, n_rows: int, row_shape: tuple[int, ...], dtype: np.dtype):
        self.fd, self.shape, self.dtype = fd, (n_rows, *row_shape), dtype
        weakref.finalize(self, os.close, fd)

    def __len__(self) -> int:
        return self.shape[0]

    def __reduce__(self):
        """Pickling would send the descriptor's number, which names another file (or none) in another process:
        wrong rows, silently. Refused; send the content keys and read them from the shared store there."""
        raise TypeError("a memory-mapped cache segment cannot be sent to another process; send the content keys and "
                        "read the rows from the shared store there (RowStore.rows)")

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        with mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ) as mapped:
            table = np.frombuffer(mapped, self.dtype, count=int(np.prod(self.shape))).reshape(self.shape)
            batch = table[np.asarray(rows, dtype=np.int64)]  # an index array: a copy, not a view of the map
            del table  # the last reference: the mapping and its resident pages go now
        return batch


class MappedRows:
    """The rows of a store, numbered across its segments (and rows kept in memory) in index order."""

    def __init__(self, parts: list[MappedSegment | np.ndarray], row_shape: tuple[int, ...], dtype: np.dtype):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape, self.dtype = (int(self.starts[-1]), *row_shape), dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        part_of = np.searchsorted(self.starts, rows, side="right") - 1
        for part in np.unique(part_of):
            here = part_of == part
            out[here] = self.parts[part][rows[here] - self.starts[part]]
        return out


class RowView:
    """The rows for one list of keys, gathered per batch from the segments (never all at once)."""

    def __init__(self, array: MappedRows | np.ndarray, row_indices: np.ndarray):
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

    def subset(self, positions: np.ndarray | list[int]) -> "RowView":
        """The rows at `positions` of this view, still read per batch (a train or validation split)."""
        return RowView(self.array, self.row_indices[np.asarray(positions, dtype=np.int64)])
