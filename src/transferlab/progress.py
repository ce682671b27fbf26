"""Progress bars: drawn only when asked for and stderr is a terminal.

A log file (stderr redirected) would otherwise collect every carriage-return frame of every bar.
"""

import sys

from tqdm import tqdm


def is_terminal(stream=None) -> bool:
    """Whether `stream` (default: the current sys.stderr, looked up at call time) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced stream without isatty, or a closed one
        return False


def progress_bar(iterable=None, *, show: bool, **kwargs) -> tqdm:
    """tqdm, disabled unless `show` and stderr is a terminal. Set postfixes with refresh=False: a refresh
    between tqdm's own updates redraws a stale count (0/16 while the loss moves)."""
    return tqdm(iterable, disable=not (show and is_terminal()), **kwargs)
