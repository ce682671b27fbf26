"""The one exception type for problems the user can fix, and how its messages name things.

The CLI turns a UserError into one line on stderr and exit code 2.
"""

import unicodedata


class UserError(Exception):
    """A one-line message that names the file or option at fault and how to fix it."""


def one_line(text: str) -> str:
    """Messages stay one line even when a file name holds a newline: control characters are escaped, and so are
    the lone surrogates that stand for a name's non-UTF-8 bytes (a stream that cannot encode them would raise)."""
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") else c
                   for c in text)


def error_text(error: BaseException, limit: int = 120) -> str:
    """What a caught exception says, fit for a one-line message: its first line, escaped and cut to `limit`,
    or its type's name when it says nothing (torch.load of an empty file raises a bare EOFError)."""
    lines = str(error).strip().splitlines()
    return one_line(lines[0])[:limit] if lines else type(error).__name__


def quoted(name: object) -> str:
    return f"'{one_line(str(name))}'"
