"""Progress bars for long runs (tqdm.auto: a widget in Jupyter, text on a terminal's stderr),
shown only where a person is watching.

`progress_bar` returns a context manager with ``update(n)``; it does nothing when disabled.
"""

from __future__ import annotations

import sys
import time

#: Runs whose remaining time is estimated above this many seconds print the estimate first.
ANNOUNCE_SECONDS = 60.0

_COMPILE = [0.0]  # seconds JAX has spent tracing, lowering, compiling or loading programs
_LISTENING = [False]


def _on_duration(event: str, seconds: float, **kwargs) -> None:
    if event.startswith(("/jax/core/compile/", "/jax/compilation_cache/")):
        _COMPILE[0] += float(seconds)


def compile_seconds() -> float:
    """Seconds JAX has spent compiling in this process (tracing, lowering, XLA compiles and
    cache loads), counted from the first call of this function, through JAX's monitoring
    events. 0 when JAX is not imported (nothing can have compiled)."""
    if not _LISTENING[0]:
        jax_monitoring = sys.modules.get("jax.monitoring")
        if jax_monitoring is None and "jax" in sys.modules:
            import jax.monitoring as jax_monitoring
        if jax_monitoring is None:
            return _COMPILE[0]
        jax_monitoring.register_event_duration_secs_listener(_on_duration)
        _LISTENING[0] = True
    return _COMPILE[0]


class _Bar:
    """A progress bar (or none) that, once a piece of work after the first is timed, prints on
    stderr how long the rest will take when that is more than a minute: a person then knows
    before waiting whether to wait. Compiling is excluded from the estimate: the first piece
    is not timed (it usually compiles what the later pieces reuse), and the seconds JAX
    spends compiling during the timed pieces (a program first needed later, e.g. an
    evaluation) are subtracted (`compile_seconds`). Silent with ``enabled=False``.

    ``clock`` and ``compiled`` (seconds compiled so far) are injectable for tests."""

    def __init__(self, total: int, desc: str, bar, announce: bool, clock=None, compiled=None):
        self.total, self.desc, self.bar, self.announce = max(int(total), 1), desc, bar, announce
        self.clock = clock or (lambda: time.perf_counter())
        self.compiled = compiled or compile_seconds
        self.done = 0
        self.base = 0  # work done before timing started (a resumed run's finished part)
        self.warm = False  # whether the first piece (with its compiling) has run
        self.t0, self.c0 = self.clock(), self.compiled()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False

    def update(self, n: int = 1) -> None:
        """Record ``n`` more units of work done."""
        self.update_bar(n)
        if not self.warm:
            # the first piece compiles: time the rest from its end
            self.warm, self.base = True, self.done
            self.t0, self.c0 = self.clock(), self.compiled()
            return
        if self.announce and self.base < self.done < self.total:
            self.announce = False  # judge once, from the first timed piece
            timed = self.done - self.base
            left = self.seconds_left()
            if left is not None and left > ANNOUNCE_SECONDS:
                print(
                    f"chaosgrad: {self.desc}: about {left / 60:.1f} more minutes "
                    f"(estimated from {timed} of {self.total - self.base} timed)",
                    file=sys.stderr,
                    flush=True,
                )

    def seconds_left(self) -> float | None:
        """The time the rest will take, from the timed pieces with the seconds spent
        compiling during them taken out; None before a piece after the first has run."""
        timed = self.done - self.base
        if not self.warm or timed <= 0:
            return None
        work = max(self.clock() - self.t0 - (self.compiled() - self.c0), 0.0)
        return work / timed * (self.total - self.done)

    def skip(self, n: int) -> None:
        """Mark ``n`` units as done before this run (a resumed run's finished part): the bar
        advances, and the time estimate is judged from the work done after them."""
        self.update_bar(n)
        self.base = self.done
        self.t0, self.c0 = self.clock(), self.compiled()

    def update_bar(self, n: int) -> None:
        """Advance the count and the bar by ``n`` (no time estimate)."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix_str(self, s: str) -> None:
        """Show ``s`` after the bar."""
        if self.bar is not None:
            self.bar.set_postfix_str(s)


def in_notebook() -> bool:
    """Whether this runs inside a Jupyter (IPython kernel) session."""
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None
    except AttributeError:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def progress_bar(total: int, desc: str, enabled: bool | None = None, min_total: int = 0):
    """A progress bar for ``total`` units of work: a context manager with ``update(n)``.

    Args:
      total: the amount of work (e.g. steps).
      desc: what is running.
      enabled: True/False to force; None shows the bar when stderr is a terminal or the code
        runs in a Jupyter kernel, and ``total >= min_total``. Unless ``enabled`` is False, a
        run estimated (from its first timed piece) to need more than a minute prints that
        estimate on stderr once.
    """
    show = enabled
    if show is None:
        show = total >= min_total and (sys.stderr.isatty() or in_notebook())
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
    return _Bar(total, desc, bar, announce=enabled is not False)
