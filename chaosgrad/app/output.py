"""Where the command's output goes: with ``--json``, stdout carries the JSON alone and
anything else printed meanwhile (a user system's ``print``) goes to stderr."""

from __future__ import annotations

import contextlib
import sys

_json_stdout = None


def print_json(text: str) -> None:
    """Print a command's JSON result on the real stdout."""
    print(text, file=_json_stdout or sys.stdout)


@contextlib.contextmanager
def json_output(enabled: bool):
    """While it is active (and ``enabled``), every other print goes to stderr."""
    global _json_stdout
    if not enabled:
        yield
        return
    _json_stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stdout.flush()
        _json_stdout = None
