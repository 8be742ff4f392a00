"""Where the command's output goes: with ``--json``, stdout carries the JSON alone and
anything else printed meanwhile (a user system's ``print``) goes to stderr; the output folder
and files (``--out``, ``--plot``) are checked before any compute."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from chaosgrad.errors import InputError
from chaosgrad.io import PLOT_FORMATS, check_regular

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


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse, before any compute, an output folder that cannot be made or written: a file
    where a folder is expected (there or above), or a folder this user cannot write."""
    if not str(path).strip():
        raise InputError(f"{flag} is empty; give a folder name")
    path = Path(path)
    probe = path
    while not probe.exists():  # the nearest part that exists must be a writable folder
        if probe.parent == probe:
            break
        if probe.is_symlink():  # a dangling link: mkdir would fail on it
            raise InputError(f"{flag} {path}: {probe} is a broken symbolic link")
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{flag} {path}: {probe} is a file, expected a folder")
    if probe.exists():
        _check_writable(probe, f"{flag} {path}")
    return path


def _check_writable(folder: Path, what: str) -> None:
    # Create and remove a file there: os.access says yes to root on read-only file systems
    # and knows nothing of quotas or full disks.
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".chaosgrad-probe-"):
            pass
    except OSError as e:
        raise InputError(
            f"{what}: the folder {folder} is not writable ({e.strerror or e})"
        ) from None


def check_out_file(
    path: str | os.PathLike, flag: str = "--plot", formats: tuple[str, ...] | None = None
) -> Path:
    """Refuse, before any compute, an output file that cannot be written: onto a folder,
    into a missing or unwritable folder, or over a file this user cannot write; onto
    anything but a regular file (a device, FIFO or socket is never replaced); and, given
    ``formats``, a name whose extension is not one of them (the format comes from it)."""
    if not str(path).strip():
        raise InputError(f"{flag} is empty; give a file name")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder, expected a file name")
    check_regular(path, flag)
    if formats is not None and path.suffix.lower().lstrip(".") not in formats:
        raise InputError(
            f"{flag} {path}: the format comes from the extension; accepted: "
            f"{', '.join('.' + f for f in formats)}"
        )
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{flag} {path}: {parent} is a file, expected a folder")
    if not parent.exists():
        raise InputError(f"{flag} {path}: the folder {parent} does not exist")
    _check_writable(parent, f"{flag} {path}")
    return path


def default_out(kind: str, name: str) -> str:
    """``out/KIND/NAME``, with a user's ``path/to/mysys.py:make`` named ``mysys_make``: the
    default folder stays under ./out, never next to the user's source."""
    module, sep, func = name.rpartition(":")
    if sep and (module.endswith(".py") or "/" in module or os.sep in module):
        name = f"{Path(module).stem}_{func}"
    base = name.replace(":", "_").replace("/", "_").replace(os.sep, "_").strip(".")
    return os.path.join("out", kind, base or "system")


def check_outputs(args) -> None:
    """Check every output path of a command (``--out``, ``--plot``) before it computes."""
    if getattr(args, "plot", None) is not None:
        # diagnose and compare copy their saved PNG; the others draw in any format
        copied = args.command in ("diagnose", "compare")
        check_out_file(args.plot, "--plot", ("png",) if copied else PLOT_FORMATS)
    if getattr(args, "out", None) is not None:
        check_out_dir(args.out, "--out")
