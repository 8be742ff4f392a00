"""A user's own factory named as ``"module:function"`` or ``"path/to/file.py:function"``:
loading it (`load_factory`), and one-line errors for failures in the user's code.

Systems and estimators share it: ``kind`` says which the factory builds, for the messages.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from chaosgrad.errors import InputError


def is_spec(name: str) -> bool:
    """Whether ``name`` reads as a user's ``module:function`` (or ``file.py:function``)."""
    module, sep, func = name.rpartition(":")
    return bool(sep and module and func)


def load_factory(spec: str, kind: str = "system", accepted: Callable[[], list[str]] | None = None):
    """The function named by ``"module:function"`` or ``"path/to/file.py:function"``.

    A module is looked up on ``sys.path`` with the current folder first (as ``python -m``
    does), so ``chaosgrad diagnose mymod:make`` finds ``./mymod.py``. ``kind`` ("system",
    "estimator") and ``accepted`` (the registered names) word the errors.
    Raises InputError when the module, file or function cannot be found.
    """
    module, sep, func = spec.rpartition(":")
    if not sep or not module or not func:
        raise InputError(f"expected 'module:function' or 'file.py:function', got {spec!r}")
    if module.endswith(".py") or os.sep in module or (os.altsep and os.altsep in module):
        path = Path(module).expanduser()
        if not path.is_file():
            raise InputError(f"no such file {str(path)!r} (from {kind} {spec!r})")
        mod_name = f"_chaosgrad_user_{path.stem}"
        try:
            loader = importlib.util.spec_from_file_location(mod_name, path)
            assert loader is not None and loader.loader is not None  # a .py file has both
            mod = importlib.util.module_from_spec(loader)
            sys.modules[mod_name] = mod
            loader.loader.exec_module(mod)
        except (InputError, KeyboardInterrupt):
            raise
        except BaseException as e:  # noqa: BLE001 -- any failure of the user's file
            sys.modules.pop(mod_name, None)
            raise user_code_error(spec, f"loading {path}", e, path, kind) from None
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                known = f"accepted: {', '.join(accepted())}" if accepted else "accepted"
                raise InputError(
                    f"unknown {kind} {spec!r}: it is not registered ({known}) and no module "
                    f"{module!r} can be imported from {os.getcwd()} or sys.path"
                ) from None
            raise user_code_error(spec, f"importing {module}", e, kind=kind) from None
        except (InputError, KeyboardInterrupt):
            raise
        except BaseException as e:  # noqa: BLE001 -- any failure of the user's module
            raise user_code_error(spec, f"importing {module}", e, kind=kind) from None
    f = getattr(mod, func, None)
    if not callable(f):
        raise InputError(f"{module!r} has no function {func!r} (from {kind} {spec!r})")
    return f


def user_code_error(
    spec: str, doing: str, e: BaseException, path=None, kind: str = "system"
) -> InputError:
    """One line for a failure of user code: the spec, what was being done, where (file and
    line of the innermost frame in the user's code) and the exception."""
    if isinstance(e, SystemExit):
        return InputError(
            f"{kind} {spec!r}: {doing} called sys.exit({e.code!r}); a {kind} "
            f"factory must return a chaosgrad {_returns(kind)}, not exit"
        )
    if isinstance(e, SyntaxError):
        where = f"{e.filename} line {e.lineno}" if e.filename else "its source"
        return InputError(f"{kind} {spec!r}: {doing}: {type(e).__name__} at {where}: {e.msg}")
    frames = traceback.extract_tb(e.__traceback__)
    own = os.path.dirname(os.path.abspath(__file__))  # the chaosgrad package
    mine = [f for f in frames if path is not None and Path(f.filename) == Path(path)]
    user = mine or [
        f for f in frames if not _ours(f.filename, own) and "importlib" not in f.filename
    ]
    where = f" (at {user[-1].filename} line {user[-1].lineno}, in {user[-1].name})" if user else ""
    first = (str(e).strip().splitlines() or [""])[0]
    return InputError(f"{kind} {spec!r}: {doing} raised {type(e).__name__}: {first}{where}")


def _ours(filename: str, own: str) -> bool:
    """Whether a frame is chaosgrad's own code: the package, or the systems/ and estimators/
    folders it installs from (an editable install maps them from the repository)."""
    root = os.path.dirname(own)
    return filename.startswith(
        (own, os.path.join(root, "systems"), os.path.join(root, "estimators"))
    )


def _returns(kind: str) -> str:
    return {"system": "System", "estimator": "Estimator"}.get(kind, kind)
