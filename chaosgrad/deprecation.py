"""Old public names kept for one release (0.2.x) as aliases that warn.

Each alias calls its replacement unchanged; CHANGELOG.md lists them under 0.2.0.
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


def key_third(*old_names: str) -> Callable[[Callable], Callable]:
    """For an entry point now ``(system, theta, key, *, <old_names>, ...)`` that took
    ``(system, theta, <old_names>..., key=...)`` before 0.2.0. A call whose third positional
    argument is neither a key nor None is in the old order: its positional arguments from
    the third on are passed as ``old_names``, with a warning. Keyword calls never warn."""

    def wrap(fn: Callable) -> Callable:
        name = fn.__name__

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            from chaosgrad.system import is_key

            if len(args) > 2 and args[2] is not None and not is_key(args[2]):
                old = args[2:]
                if len(old) > len(old_names):
                    raise TypeError(
                        f"{name}() takes at most {2 + len(old_names)} positional "
                        f"arguments in its old order, got {len(args)}"
                    )
                warn(
                    f"{name}(system, theta, {', '.join(old_names[: len(old)])}, ...)",
                    f"{name}(system, theta, key, {old_names[0]}=..., ...)",
                )
                for n, v in zip(old_names, old, strict=False):
                    if n in kwargs:
                        raise TypeError(f"{name}() got multiple values for argument {n!r}")
                    kwargs[n] = v
                args = args[:2]
            return fn(*args, **kwargs)

        return wrapper

    return wrap
