"""The `chaosgrad` command's argument types: argparse ``type=`` callables that read an
integer, a seed, a ``--k``, a list of horizons or a finite number, and refuse anything else
with the accepted range (digit separators such as ``1_0`` are refused, not read).
"""

from __future__ import annotations

import argparse
import math

# Step counts and horizons index steps with int32 on the device (fold_in, scan counters):
# larger values would overflow there, so they are refused here with the range.
MAX_STEPS = 2**31 - 1
MAX_SEED = 2**32 - 1  # a PRNGKey seed is 32 bits wide without float64 mode


def _parse_int(text: str, what: str) -> int:
    """``text`` as an int, or the argparse error "expected <what>"."""
    try:
        if "_" in text:  # int("1_0") is 10: digit separators are refused, not read
            raise ValueError(text)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _positive_int(text: str, hi: int = MAX_STEPS) -> int:
    v = _parse_int(text, "a positive integer")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if v > hi:
        raise argparse.ArgumentTypeError(f"{text} is too large; accepted: 1..{hi}")
    return v


def _nonneg_int(text: str) -> int:
    v = _parse_int(text, "an integer >= 0")
    if not 0 <= v <= MAX_STEPS:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..{MAX_STEPS}, got {text!r}")
    return v


def _seed(text: str) -> int:
    v = _parse_int(text, "an integer seed")
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed {text} is out of range; accepted: 0..{MAX_SEED}")
    return v


def _k_arg(text: str):
    if text.strip().lower() == "all":
        return "all"
    return _positive_int(text)


def _int_list(text: str) -> list[int]:
    parts = [x for x in text.split(",") if x.strip()]
    try:
        if any("_" in x for x in parts):  # int("1_0") is 10: separators refused, not read
            raise ValueError(text)
        vals = [int(x) for x in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 10,30,100, got {text!r}"
        ) from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 10,30,100, got {text!r}"
        )
    if max(vals) > MAX_STEPS:
        raise argparse.ArgumentTypeError(
            f"horizon {max(vals)} is too large; accepted: 1..{MAX_STEPS}"
        )
    return vals


def _finite_float(text: str) -> float:
    try:
        if "_" in text:  # float("1_0") is 10.0: digit separators are refused, not read
            raise ValueError(text)
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v
