"""Decode and resize every image once; every phase then reads uint8 pixels from a memory-mapped cache."""

import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL

from transferlab.data.images import ImageDecodeError, Preprocessing, load_for_model
from transferlab.data.fingerprints import file_digest
from transferlab.data.row_store import RowStore, RowView
from transferlab.data.scan import LabelledImage
from transferlab.errors import UserError, one_line, quoted
from transferlab.progress import progress_bar


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class DecodedImages:
    images: list[LabelledImage]  # only those that decoded
    content_keys: list[str]      # content hash per image, the key of every cache
    pixels: RowView              # uint8 N x H x W x 3
    skipped: list[SkippedFile]


DECODE_CHUNK = 256  # images decoded before they are written to the cache
DECODER_VERSION = 1  # raise whenever images.py decodes differently: the decoded cache is keyed by it


def decoded_cache_dir(cache_dir: Path, prep: Preprocessing) -> Path:
    """Decoded pixels depend on the geometry, on our decoder and on Pillow's (its resampling changes)."""
    return Path(cache_dir) / "decoded" / f"{prep.geometry_key()}-decoder{DECODER_VERSION}-pillow{PIL.__version__}"


def _digest_or_skip(path: Path) -> str | SkippedFile:
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # opening a FIFO named x.jpg would block forever
            return SkippedFile(path, "not a regular file")
        return file_digest(path)
    except OSError as e:
        return SkippedFile(path, f"cannot read: {e.strerror or e}")


def _decode_or_skip(path: Path, prep: Preprocessing) -> np.ndarray | SkippedFile:
    try:
        return load_for_model(path, prep)
    except ImageDecodeError as e:
        return SkippedFile(path, str(e))


def decode_images(images: list[LabelledImage], prep: Preprocessing, cache_dir: Path, *,
                  strict: bool = False, show_progress: bool = True) -> DecodedImages:
    """Hash every file, decode only those the cache lacks (threads: Pillow releases the GIL)."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        digests = list(pool.map(_digest_or_skip, [im.path for im in images]))
    skipped = [d for d in digests if isinstance(d, SkippedFile)]
    kept = [(im, d) for im, d in zip(images, digests) if isinstance(d, str)]

    size = prep.image_size_px
    store = RowStore(decoded_cache_dir(cache_dir, prep), (size, size, 3), "uint8")
    missing = set(store.missing([d for _, d in kept]))
    todo = {d: im.path for im, d in kept if d in missing}
    failures: dict[str, str] = {}

    def decoded_chunks():
        """Decode DECODE_CHUNK images at a time, so memory holds one chunk, not the dataset."""
        items = list(todo.items())
        bar = progress_bar(total=len(items), desc="decode", unit="img", show=show_progress, leave=False)
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(items), DECODE_CHUNK):
                chunk = items[start:start + DECODE_CHUNK]
                rows = np.empty((len(chunk), size, size, 3), np.uint8)  # decoded in place: no second copy

                def decode_into(i: int) -> SkippedFile | None:
                    result = _decode_or_skip(chunk[i][1], prep)
                    if isinstance(result, SkippedFile):
                        return result
                    rows[i] = result
                    return None
                results = list(pool.map(decode_into, range(len(chunk))))
                bar.update(len(chunk))
                failures.update({k: r.reason for (k, _), r in zip(chunk, results) if r is not None})
                good = [i for i, r in enumerate(results) if r is None]
                if good:
                    yield [chunk[i][0] for i in good], rows if len(good) == len(chunk) else rows[good]
        bar.close()

    if todo:
        store.append(decoded_chunks())
    failed = set(failures)
    # a duplicate of a file that failed fails too: name every copy
    skipped += [SkippedFile(im.path, failures[d]) for im, d in kept if d in failed]
    kept = [(im, d) for im, d in kept if d not in failed]

    for s in skipped:
        if strict:
            raise UserError(f"cannot decode {quoted(s.path)}: {one_line(s.reason)}; remove or replace it "
                            "(or drop --strict)")
        warnings.warn(f"skipping {quoted(s.path)}: {one_line(s.reason)}", stacklevel=2)
    keys = [d for _, d in kept]
    return DecodedImages(images=[im for im, _ in kept], content_keys=keys, pixels=store.rows(keys),
                         skipped=skipped)
