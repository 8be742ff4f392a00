"""Input checks, one home: each turns a value (or a command-line string) into what chaosgrad
runs on, or raises `InputError` in one line saying what was wrong and what is accepted.

The library's entry points, the systems, the estimators and the `chaosgrad` command's argument
types (`chaosgrad.app.cli_types`, which only turn these errors into argparse's) all call these.
"""

from __future__ import annotations

import math

import numpy as np

from chaosgrad.errors import InputError

# Step counts and horizons index steps with int32 on the device (fold_in, scan counters):
# larger values would overflow there, so they are refused with the range.
MAX_STEPS = 2**31 - 1
MAX_SEED = 2**32 - 1  # a PRNGKey seed is 32 bits wide without float64 mode
MAX_DENSE_DIM = 4096
DEFAULT_K = 8  # exponents when none are asked for: cheap at any n, enough for a verdict


# -- values ------------------------------------------------------------------------------------
def check_int(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int when it is one (an int, a numpy integer, or a float with no
    fraction); a bool, a fraction, NaN or a value outside ``lo..hi`` is an InputError naming
    ``name`` and what is accepted. Nothing is rounded."""
    ok = not isinstance(value, bool)
    if ok and not isinstance(value, (int, np.integer)):
        try:
            f = float(value)
        except (TypeError, ValueError):
            ok = False
        else:
            ok = math.isfinite(f) and f.is_integer() and not isinstance(value, str)
    rng = f"{'' if lo is None else lo}..{'' if hi is None else hi}"
    if not ok:
        raise InputError(f"{name} must be an integer ({rng}), got {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InputError(f"{name} must be an integer in {rng}, got {value!r}")
    return v


def check_positive_int(value, name: str = "steps") -> int:
    """``value`` as a positive int (the rule of `check_int` with ``lo=1``), or an InputError
    "<name> must be a positive integer, got <value>"."""
    try:
        return check_int(value, name, lo=1)
    except InputError:
        raise InputError(f"{name} must be a positive integer, got {value!r}") from None


def check_number(value, name: str, *, positive: bool = False, nonneg: bool = False) -> float:
    """``value`` as a finite float (a bool or string is refused), optionally > 0 or >= 0."""
    ok = not isinstance(value, (bool, str))
    try:
        f = float(value) if ok else math.nan
    except (TypeError, ValueError):
        f, ok = math.nan, False
    need = (
        "a positive finite number"
        if positive
        else ("a finite number >= 0" if nonneg else "a finite number")
    )
    if not ok or not math.isfinite(f) or (positive and not f > 0) or (nonneg and f < 0):
        raise InputError(f"{name} must be {need}, got {value!r}")
    return f


def check_horizons(horizons) -> np.ndarray:
    """Horizons as a sorted array of distinct positive ints; an empty or non-list value, or
    one horizon that is not a positive integer, is an InputError."""
    try:
        hs = [check_positive_int(h, "horizon") for h in horizons]
    except TypeError:
        raise InputError(
            f"horizons must be a list of positive integers, got {horizons!r}"
        ) from None
    if not hs:
        raise InputError("horizons must not be empty")
    return np.asarray(sorted(set(hs)))


def check_dense(n: int, max_dim: int = MAX_DENSE_DIM) -> None:
    """Refuse to build an n × n matrix when n is too large to be sensible."""
    if n > max_dim:
        raise InputError(
            f"a dense Jacobian of dimension {n} exceeds max_dim={max_dim}: use the matrix-free "
            "operator (step_jacobian_operator) or raise max_dim"
        )


def resolve_k(
    k: int | str | None,
    n: int,
    name: str = "system",
    *,
    default: int | str | None = None,
    what: str = "k",
) -> int:
    """How many directions (exponents, singular values, eigenvalues) to compute: the one
    rule of every entry point that takes ``k``.

    ``None`` → the entry point's ``default`` (itself resolved; None: min(n, DEFAULT_K)),
    ``"all"`` → n, else an integer in 1..n (a whole float or a numeric string is accepted);
    anything else, a k above n included, is an InputError with one message, naming ``what``
    was given (``"--k"`` on the command line) and the system ``name``. Nothing is clamped.
    """
    if k is None:
        if default is None:
            return min(n, DEFAULT_K)
        return resolve_k(default, n, name, what=what)

    def refuse():
        return InputError(
            f"{what} must be an integer between 1 and the phase dimension {n} "
            f"of {name!r}, or 'all'; got {k!r}"
        )

    if isinstance(k, str):
        if k.strip().lower() == "all":
            return n
        try:
            k = int(k)
        except ValueError:
            raise refuse() from None
    if (
        isinstance(k, bool)
        or not isinstance(k, (int, float, np.integer, np.floating))
        or not float(k).is_integer()
        or not 1 <= k <= n
    ):
        raise refuse()
    return int(k)


# -- command-line text -------------------------------------------------------------------------
# Python's int("1_0") is 10 and float("1_0") is 10.0: a digit separator in a typed number is
# almost always a typo, so every reader below refuses it rather than read it.
def no_separators(text: str) -> str:
    """``text`` unchanged, or ValueError when it holds a digit separator ``_``."""
    if "_" in text:
        raise ValueError("digit separators '_' are not accepted")
    return text


def read_int(text: str, what: str) -> int:
    """``text`` as an int, or the InputError "expected <what>, got <text>"."""
    try:
        return int(no_separators(text))
    except ValueError:
        raise InputError(f"expected {what}, got {text!r}") from None


def positive_int_text(text: str, hi: int = MAX_STEPS) -> int:
    """A positive integer up to ``hi`` (a step count, a horizon, a number of seeds)."""
    v = read_int(text, "a positive integer")
    if v <= 0:
        raise InputError(f"expected a positive integer, got {text!r}")
    if v > hi:
        raise InputError(f"{text} is too large; accepted: 1..{hi}")
    return v


def nonneg_int_text(text: str) -> int:
    """An integer in 0..MAX_STEPS (a transient, a number of uncounted steps)."""
    v = read_int(text, "an integer >= 0")
    if not 0 <= v <= MAX_STEPS:
        raise InputError(f"expected an integer in 0..{MAX_STEPS}, got {text!r}")
    return v


def seed_text(text: str) -> int:
    """A PRNG seed in 0..MAX_SEED."""
    v = read_int(text, "an integer seed")
    if not 0 <= v <= MAX_SEED:
        raise InputError(f"seed {text} is out of range; accepted: 0..{MAX_SEED}")
    return v


def k_text(text: str) -> int | str:
    """``"all"`` or a positive integer; `resolve_k` checks it against the system later."""
    if text.strip().lower() == "all":
        return "all"
    return positive_int_text(text)


def horizons_text(text: str) -> list[int]:
    """Comma-separated positive integers such as ``10,30,100``."""
    refuse = InputError(f"expected comma-separated positive integers like 10,30,100, got {text!r}")
    try:
        vals = [int(no_separators(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise refuse from None
    if not vals or any(v <= 0 for v in vals):
        raise refuse
    if max(vals) > MAX_STEPS:
        raise InputError(f"horizon {max(vals)} is too large; accepted: 1..{MAX_STEPS}")
    return vals


def finite_float_text(text: str) -> float:
    """A finite number."""
    try:
        v = float(no_separators(text))
    except ValueError:
        raise InputError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise InputError(f"expected a finite number, got {text!r}")
    return v
