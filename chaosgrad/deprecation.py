"""Old public names kept for one release (0.2.x) as aliases that warn.

Each alias calls its replacement unchanged; CHANGELOG.md lists them under Deprecated.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

REMOVED_IN = "0.3.0"


def warn(old: str, new: str, stacklevel: int = 3) -> None:
    """A DeprecationWarning saying that ``old`` is now ``new`` (``stacklevel``: the caller's
    caller, i.e. the user's line, when called from inside the alias)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in chaosgrad {REMOVED_IN}: use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def alias(fn: Callable, old: str, new: str | None = None) -> Callable:
    """``fn`` under its old name ``old``: same arguments and results, plus a warning."""
    new = new or f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warn(old, new)
        return fn(*args, **kwargs)

    wrapper.__doc__ = f"Deprecated (removed in {REMOVED_IN}): use {new}."
    wrapper.__name__ = old.partition("(")[0].rpartition(".")[2]
    wrapper.__qualname__ = wrapper.__name__
    return wrapper
