"""The one exception type for problems the user can fix; the CLI turns it into exit code 2."""


class UserError(Exception):
    """A one-line message that names the file or option at fault and how to fix it."""
