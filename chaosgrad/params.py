"""Command-line ``key=value`` parameters, typed by the defaults of the function they feed.

Shared by the system and estimator registries (``--param``, ``--est-param``).
"""

from __future__ import annotations

import inspect
import math

from chaosgrad.checks import check_int, check_number, no_separators  # noqa: F401 -- re-exported
from chaosgrad.errors import InputError


def _number(text: str, conv):
    """``conv(text)``, refusing what Python's int/float accept but a person rarely means:
    digit separators (``1_4`` would read as 14)."""
    return conv(no_separators(text))


def convert(text: str, default):
    """``text`` read as the type of ``default`` (bool, int, float, comma tuple; None: guess)."""
    if isinstance(default, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true/false")
    if isinstance(default, int):
        return _number(text, int)
    if isinstance(default, float):
        return _number(text, float)
    if isinstance(default, (tuple, list)):
        return tuple(_number(x, float) for x in text.split(","))
    if default is None:
        if "_" in text and any(c.isdigit() for c in text):
            _number(text, int)  # raises: "1_4" is not 14
        for conv in (int, float):
            try:
                return conv(text)
            except ValueError:
                pass
        if "," in text:
            return tuple(_number(x, float) for x in text.split(","))
        if text.lower() in ("none", "null"):
            return None
    return text


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    return True


def nonfinite_allowed(factory) -> frozenset[str]:
    """The parameters of ``factory`` that may be NaN or ±Inf: a factory declares them with
    a ``nonfinite_params`` attribute (a collection of names); by default none may."""
    return frozenset(getattr(factory, "nonfinite_params", ()) or ())


def parse_kv(
    items: list[str] | None,
    accepted: dict[str, inspect.Parameter],
    what: str,
    flag: str,
    allow_nonfinite: frozenset[str] | set[str] = frozenset(),
) -> dict:
    """Typed keyword arguments from ``k=v`` strings, checked against ``accepted``.

    A key given twice is refused (the last value would win silently), and so is a NaN or
    ±Inf number unless its key is in ``allow_nonfinite``: a non-finite parameter almost
    always means a typo, and it would surface only as NaN results minutes later.

    Args:
      items: the strings; accepted: parameter name → `inspect.Parameter` (its default
        gives the type); what: e.g. "system 'henon'", named in errors; flag: the option
        the strings came from, named in errors; allow_nonfinite: keys that may be
        non-finite (see `nonfinite_allowed`).
    """
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"{flag} must look like key=value, got {item!r}")
        if key not in accepted:
            raise InputError(f"{what} has no parameter {key!r}; accepted: {', '.join(accepted)}")
        if key in out:
            raise InputError(
                f"{flag} {key} is given twice (={out[key]!r} and {item!r}); "
                "give each parameter once"
            )
        default = accepted[key].default
        default = None if default is inspect.Parameter.empty else default
        try:
            out[key] = convert(value.strip(), default)
        except (ValueError, OverflowError) as e:
            why = f" ({e})" if "separators" in str(e) else ""
            raise InputError(
                f"parameter {key!r} of {what}: cannot read {value!r} as "
                f"{type(default).__name__} (default {default!r}){why}"
            ) from None
        if key not in allow_nonfinite and not _finite(out[key]):
            raise InputError(
                f"parameter {key!r} of {what}: {value.strip()!r} is not a finite "
                "number; accepted: finite values"
            )
    return out
