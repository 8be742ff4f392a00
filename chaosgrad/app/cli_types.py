"""The `chaosgrad` command's argument types: argparse ``type=`` callables for an integer, a
seed, a ``--k``, a list of horizons or a finite number. The rules live in `chaosgrad.checks`;
each type here only turns its `InputError` into argparse's error (exit status 2, the usage).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

from chaosgrad import checks
from chaosgrad.checks import MAX_SEED, MAX_STEPS  # noqa: F401 -- re-exported
from chaosgrad.errors import InputError


def argparse_type(check: Callable[[str], object]) -> Callable[[str], object]:
    """``check`` as an argparse type: its InputError becomes an ArgumentTypeError."""

    @functools.wraps(check)
    def read(text: str, *args):
        try:
            return check(text, *args)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return read


_parse_int = argparse_type(checks.read_int)
_positive_int = argparse_type(checks.positive_int_text)
_nonneg_int = argparse_type(checks.nonneg_int_text)
_seed = argparse_type(checks.seed_text)
_k_arg = argparse_type(checks.k_text)
_int_list = argparse_type(checks.horizons_text)
_finite_float = argparse_type(checks.finite_float_text)
