"""Content fingerprints: what every cache key, weights identity and study cell hash is made of.

Image files and weights are hashed by content (a rename keeps a cache, an edited byte invalidates it);
cache folders and cells by the JSON of everything they depend on.
"""

import hashlib
import json
import os
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 64 << 20
# Per process: checksums already verified, by file version, so that each file is read once per run
# however often it is opened.
_DIGESTS: dict[tuple[int, int, int, int], str] = {}


def content_hasher():
    """The content hash of files: image files, weights, cache segments."""
    return hashlib.blake2b(digest_size=16)


def _stream_digest(f: BinaryIO) -> str:
    """Read (not memory-map) so that hashing a large file does not count towards resident memory."""
    h = content_hasher()
    while chunk := f.read(CHUNK_BYTES):
        h.update(chunk)
    return h.hexdigest()


def _version_of(fd: int) -> tuple[int, int, int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def remember_digest(fd: int, digest: str) -> None:
    """A digest computed while writing the file: later reads of this version trust it."""
    _DIGESTS[_version_of(fd)] = digest


def fd_digest_once(fd: int) -> str:
    key = _version_of(fd)
    if key not in _DIGESTS:
        with open(fd, "rb", closefd=False) as f:
            f.seek(0)
            _DIGESTS[key] = _stream_digest(f)
    return _DIGESTS[key]


def file_digest(path: Path) -> str:
    """Content hash of an image file: renames and moves keep the cache, any edited byte invalidates."""
    with open(path, "rb") as f:
        return _stream_digest(f)


def file_digest_once(path: Path) -> str:
    """`file_digest`, read once per process per version of the file (device, inode, size, mtime)."""
    with open(path, "rb") as f:
        return fd_digest_once(f.fileno())


def key_digest(*parts: object) -> str:
    """A short folder name for a cache that depends on all of `parts` (model, weights, preprocessing…)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def config_hash(key: dict) -> str:
    """A study cell's folder name: the hash of its resolved config."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def keys_digest(content_keys: list[str]) -> str:
    """One digest for a list of images' content keys, in order."""
    return hashlib.sha256("\n".join(content_keys).encode()).hexdigest()
