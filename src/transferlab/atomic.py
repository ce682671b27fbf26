"""Every result file goes through here: write to a temp file beside the target, fsync, rename.

A reader (or a resumed run after Ctrl-C / SIGKILL) sees either the old file or the new one, never half.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from filelock import FileLock, Timeout

from transferlab.errors import UserError, one_line, quoted


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def creatable_problem(folder: Path) -> str | None:
    """Why `folder` cannot be written or made (None: it can). The probe, a temp folder in the nearest existing
    parent removed at once, is what catches a read-only mount or /proc even for root."""
    folder = Path(folder).expanduser()
    existing = folder
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return "it is a file, not a folder" if existing == folder else f"{quoted(existing)} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".transferlab-probe-"))
    except OSError as e:
        return e.strerror if existing == folder else f"{e.strerror} in {quoted(existing)}"
    return None


def check_creatable(folder: Path, option: str) -> None:
    """A folder the tool will write into is writable or can be made, else one UserError naming `option`:
    checked before anything is written."""
    problem = creatable_problem(folder)
    if problem is not None:
        raise UserError(f"{option} {quoted(folder)} cannot be written or made ({problem}); give a writable folder")


def check_not_in_the_way(files: Iterable[Path] = (), folders: Iterable[Path] = ()) -> None:
    """What a command will write is not blocked by something of the other kind (a folder named like a file it
    writes, a file named like a folder it fills): one line naming it, checked before the command writes."""
    for path in files:
        if Path(path).is_dir():
            raise UserError(f"{quoted(path)} is a folder where transferlab writes a file; move it out of the way")
    for path in folders:
        if Path(path).exists() and not Path(path).is_dir():
            raise UserError(f"a file is in the way of the folder {quoted(path)}; move it out of the way")


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


def utf8_bytes(text: str) -> bytes:
    """`text` as the JSON files store it: UTF-8 in any locale. A file name read under a non-UTF-8 locale
    (LC_ALL=C) holds its bytes as lone surrogates; they are stored as those bytes, which read as the name
    (local_path_text undoes it). UnicodeDecodeError when those bytes are not UTF-8 (a name no JSON file holds)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogateescape")
        data.decode("utf-8")
        return data


def write_text_atomic(path: Path, text: str) -> None:
    try:
        data = utf8_bytes(text)
    except UnicodeDecodeError as e:
        data = text.encode("utf-8", "surrogateescape")
        name = one_line(data[max(e.start - 30, 0):e.end + 30].decode("utf-8", "backslashreplace"))
        raise UserError(f"cannot write {quoted(path)}: a file name in it is not UTF-8 (…{name}…); rename that "
                        "file with a UTF-8 name") from None
    write_bytes_atomic(path, data)


def local_path_text(stored: str) -> str:
    """A file name as the JSON files store it (UTF-8) spelled as this process's file functions spell it: the
    same text under a UTF-8 locale, its bytes as surrogates under LC_ALL=C. Runs resume in either."""
    return os.fsdecode(stored.encode("utf-8", "surrogateescape"))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def lock_folder(folder: Path, busy: str) -> FileLock:
    """One process works in a run or study folder at a time (held until `release()`): a second one would train the
    same phases and write the same files. `busy` is the one line the second one gets."""
    lock = FileLock(Path(folder) / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(busy) from None
    return lock
