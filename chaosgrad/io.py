"""Results on disk: atomic writes, strict JSON (non-finite numbers as null, counted), and
npz archives without pickle. Every file chaosgrad writes goes through here.
"""

from __future__ import annotations

import io as _io
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from chaosgrad.errors import InputError

#: The key under which `dumps` records how many non-finite numbers became null.
NONFINITE_KEY = "nonfinite_values"
#: Figure formats a file name may ask for by its extension.
PLOT_FORMATS = ("png", "svg", "pdf")


def jsonable(obj: Any) -> tuple[Any, int]:
    """``obj`` as plain JSON types, and how many non-finite floats became ``None``.

    Dict keys become strings; numpy/JAX scalars and arrays become Python numbers and lists;
    anything else unknown becomes its ``str``. NaN and ±Inf become ``None`` (strict JSON has
    no such numbers) and are counted, never dropped silently.
    """
    count = 0

    def clean(x):
        nonlocal count
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (bool, np.bool_)):
            return bool(x)
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, (float, np.floating)):
            if math.isfinite(float(x)):
                return float(x)
            count += 1
            return None
        if x is None or isinstance(x, str):
            return x
        if isinstance(x, Path):
            return str(x)
        if hasattr(x, "__array__") or isinstance(x, np.ndarray):
            a = np.asarray(x)
            return clean(a.item() if a.ndim == 0 else a.tolist())
        return str(x)

    return clean(obj), count


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj``: non-finite numbers as null.

    When any were nulled and ``obj`` is a dict, the count is added under
    ``"nonfinite_values"`` so a reader can tell null-by-design from null-by-overflow.
    """
    clean, count = jsonable(obj)
    if count and isinstance(clean, dict):
        clean[NONFINITE_KEY] = clean.get(NONFINITE_KEY) or count
    return json.dumps(clean, indent=indent, allow_nan=False)


def check_regular(path: str | os.PathLike, what: str = "") -> None:
    """Refuse to write over ``path`` when it exists and is not a regular file (a device
    node, FIFO or socket: replacing ``/dev/null`` with a PNG must never happen). A symbolic
    link is itself replaced, never followed."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError:
        return  # unreadable here: the write itself will say why
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return
    kind = (
        "a folder"
        if stat.S_ISDIR(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    prefix = f"{what} " if what else ""
    raise InputError(
        f"{prefix}{path} is {kind}; chaosgrad writes only regular files: give a file name"
    )


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    check_regular(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        check_regular(path)  # again: it may have appeared while we wrote
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (a temp file in the same folder, fsync, rename):
    a reader sees the old file or the new one, never a partial one, even after a kill."""
    return _atomic(Path(path), lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` to ``path`` as strict JSON (see `dumps`), atomically."""
    return write_text(path, dumps(obj) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing, unreadable or malformed file is an InputError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path} as JSON ({type(e).__name__}: {e})") from None


def save_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Write named arrays to an .npz archive atomically. Object arrays are refused (they would
    need pickle to load)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    bad = [k for k, v in arrays.items() if v.dtype == object]
    if bad:
        raise TypeError(f"save_npz: arrays {bad} have dtype object; store numbers or strings")
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    return write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an .npz archive into a dict, without pickle. A missing, truncated, empty or
    garbage file is an InputError naming the file (delete it to recompute)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise InputError(
            f"cannot read {path}: {type(e).__name__}: {e}; it is damaged or not "
            "an .npz archive (delete it to start that part again)"
        ) from None


def count_text(x, digits: int = 2) -> str:
    """A count or a horizon in words a reader can take in: ``1234`` below a million,
    ``2e84`` (``digits`` significant figures, no ``+``) above, ``inf``/``n/a`` when it is
    not a finite number — never an 85-digit integer."""
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return "n/a"
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if abs(v) < 1e6:
        return f"{v:.0f}"
    mant, exp = f"{v:.{max(digits, 1) - 1}e}".split("e")
    mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
    return f"{mant}e{int(exp)}"


def named_leaves(tree, root: str = "theta") -> dict:
    """The leaves of a pytree by plain path names: ``{"log_lr": ...}`` for a dict,
    ``"layers/0/w"`` for nesting, ``root`` for a bare array. For files and logs a user reads
    (theta.npz, curves.npz, log.jsonl), instead of ``"['log_lr']"``."""
    import jax

    def part(k) -> str:
        for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(part(k) for k in path) or root
        out[name] = np.asarray(leaf)
    return out
