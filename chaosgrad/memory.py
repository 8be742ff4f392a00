"""Memory a request needs, estimated before it runs: refuse what cannot fit, with the figure.

`available_bytes()` is what this process may still use; `check_fits(nbytes, what)` raises.
"""

from __future__ import annotations

import os

from chaosgrad.errors import InputError

GIB = 1024**3


def available_bytes() -> int:
    """Bytes this process can still allocate: the accelerator's free memory when JAX runs on
    one, else the host's available memory (MemAvailable, or physical memory)."""
    try:
        import jax

        dev = jax.devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    except Exception:  # no backend yet or no stats: fall back to the host
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def fmt_bytes(n: float) -> str:
    """``n`` bytes as a short human figure (e.g. ``37.3 GiB``)."""
    for unit, size in (("TiB", 1024**4), ("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


class LargeRequest(UserWarning):
    """A request that fits in memory but takes a large share of it."""


def check_fits(
    nbytes: float, what: str, available: int | None = None, warn_fraction: float = 0.25
) -> float:
    """Raise InputError when ``nbytes`` (an estimate for ``what``) exceeds the memory left;
    warn (`LargeRequest`) when it takes more than ``warn_fraction`` of it, so a heavy run
    does not start unannounced. Returns ``nbytes``."""
    import warnings

    avail = available_bytes() if available is None else available
    if nbytes > avail:
        raise InputError(
            f"{what} needs about {fmt_bytes(nbytes)} of memory, more than the "
            f"{fmt_bytes(avail)} available; ask for less"
        )
    if nbytes > warn_fraction * avail:
        warnings.warn(
            f"{what} needs about {fmt_bytes(nbytes)} of the {fmt_bytes(avail)} of memory available",
            LargeRequest,
            stacklevel=2,
        )
    return nbytes
