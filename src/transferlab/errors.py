"""The one exception type for problems the user can fix, and how its messages name things.

The CLI turns a UserError into one line on stderr and exit code 2.
"""

import unicodedata


class UserError(Exception):
    """A one-line message that names the file or option at fault and how to fix it."""


def one_line(text: str) -> str:
    """Messages stay one line even when a file name holds a newline: control characters are escaped."""
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
                   for c in text)


def quoted(name: object) -> str:
    return f"'{one_line(str(name))}'"
