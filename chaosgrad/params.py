"""Command-line ``key=value`` parameters, typed by the defaults of the function they feed.

Shared by the system and estimator registries (``--param``, ``--est-param``).
"""

from __future__ import annotations

import inspect

from chaosgrad.errors import InputError


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
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, (tuple, list)):
        return tuple(float(x) for x in text.split(","))
    if default is None:
        for conv in (int, float):
            try:
                return conv(text)
            except ValueError:
                pass
        if "," in text:
            return tuple(float(x) for x in text.split(","))
        if text.lower() in ("none", "null"):
            return None
    return text


def parse_kv(items: list[str] | None, accepted: dict[str, inspect.Parameter], what: str,
             flag: str) -> dict:
    """Typed keyword arguments from ``k=v`` strings, checked against ``accepted``.

    Args:
      items: the strings; accepted: parameter name → `inspect.Parameter` (its default
        gives the type); what: e.g. "system 'henon'", named in errors; flag: the option
        the strings came from, named in errors.
    """
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"{flag} must look like key=value, got {item!r}")
        if key not in accepted:
            raise InputError(f"{what} has no parameter {key!r}; accepted: "
                             f"{', '.join(accepted)}")
        default = accepted[key].default
        default = None if default is inspect.Parameter.empty else default
        try:
            out[key] = convert(value.strip(), default)
        except ValueError:
            raise InputError(f"parameter {key!r} of {what}: cannot read {value!r} as "
                             f"{type(default).__name__} (default {default!r})") from None
    return out
