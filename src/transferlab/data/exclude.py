"""--exclude FILE: the images a user chose to leave out of training, read before anything is written.

FILE is the audit's CSV (its `file` column; `transferlab audit` writes it) or a plain list, one path per
line ('#' starts a comment). A relative path is relative to FILE's folder, so a list travels with its data.
"""

import csv
import io
import os
import re
from pathlib import Path

from transferlab.atomic import local_path_text
from transferlab.errors import UserError, quoted

FILE_COLUMN = "file"


def read_exclude_list(path: Path | str) -> tuple[str, ...]:
    """The absolute paths FILE names, in its order without repeats; a damaged file is one line naming it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise UserError(f"--exclude {quoted(path)} cannot be read ({e.strerror or e}); give the audit's CSV or a "
                        "list of image paths, one per line") from None
    except UnicodeDecodeError:
        raise UserError(f"--exclude {quoted(path)} is not UTF-8 text; give the audit's CSV or a list of image "
                        "paths, one per line") from None
    if "\0" in text:
        raise UserError(f"--exclude {quoted(path)} is binary, not a list; give the audit's CSV or a list of image "
                        "paths, one per line")
    lines = text.splitlines()
    first = lines[0] if lines else ""
    header = next(csv.reader([first]), []) if first else []
    if FILE_COLUMN in header:
        names = _csv_column(text, path, len(header))
    elif any(cell.strip().strip('"').lower() == FILE_COLUMN for cell in re.split(r"[,;\t]", first)):  # Excel's ';'
        raise UserError(f"--exclude {quoted(path)}: its first line {quoted(first)} looks like a CSV header, but "
                        f"not one with a '{FILE_COLUMN}' column separated by commas; save it as the audit writes it "
                        "(comma-separated, lower-case header)")
    else:
        names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    base = Path(os.path.abspath(path)).parent  # not resolved: a linked folder keeps the names its images have
    # a name as the file spells it (UTF-8), then as this process's file functions do (LC_ALL=C: surrogates)
    return tuple(dict.fromkeys(os.path.abspath(base / Path(local_path_text(name)).expanduser()) for name in names))


def _csv_column(text: str, path: Path, width: int) -> list[str]:
    rows = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    names = []
    try:
        for row in rows:
            if None in row or any(v is None for v in row.values()):
                raise UserError(f"--exclude {quoted(path)}: line {rows.line_num} has another number of fields than "
                                f"its header ({width}); repair the CSV or write the audit again")
            if not row[FILE_COLUMN].strip():
                raise UserError(f"--exclude {quoted(path)}: line {rows.line_num} has an empty '{FILE_COLUMN}'; "
                                "repair the CSV or write the audit again")
            names.append(row[FILE_COLUMN].strip())
    except csv.Error as e:
        raise UserError(f"--exclude {quoted(path)}: line {rows.line_num} is not valid CSV ({e}); repair the CSV "
                        "or write the audit again") from None
    return names


def check_excluded_known(excluded: tuple[Path, ...], known: set[Path], source: str) -> None:
    """Every excluded path must be an image of the data: a typo would otherwise leave an image in silently."""
    unknown = [p for p in excluded if p not in known]
    if unknown:
        raise UserError(f"--exclude names {quoted(unknown[0])}, which is not an image of {quoted(source)}"
                        + (f" ({len(unknown)} such paths)" if len(unknown) > 1 else "")
                        + "; remove it from the list or give the data folder the list was made for")
