"""Every result file goes through here: write to a temp file beside the target, fsync, rename.

A reader (or a resumed run after Ctrl-C / SIGKILL) sees either the old file or the new one, never half.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then move tmp_path over `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or Path(e.filename) == tmp:  # name the file the user knows, not the temp file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
