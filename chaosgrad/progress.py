"""Progress bars for long runs (tqdm.auto: a widget in Jupyter, text on a terminal's stderr),
shown only where a person is watching.

`progress_bar` returns a context manager with ``update(n)``; it does nothing when disabled.
"""

from __future__ import annotations

import sys


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


def in_notebook() -> bool:
    """Whether this runs inside a Jupyter (IPython kernel) session."""
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None
    except AttributeError:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def progress_bar(total: int, desc: str, enabled: bool | None = None, min_total: int = 0):
    """A tqdm bar on stderr, or a no-op.

    Args:
      total: the amount of work (e.g. steps).
      desc: what is running.
      enabled: True/False to force; None shows it when stderr is a terminal or the code runs
        in a Jupyter kernel, and ``total >= min_total``.
    """
    if enabled is None:
        enabled = total >= min_total and (sys.stderr.isatty() or in_notebook())
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
