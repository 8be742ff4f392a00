"""Figures for results: Lyapunov convergence histories and gradient growth against horizon.

Each function draws onto new matplotlib axes (Agg, no display needed) and can save a PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a PNG atomically (write a temp file, then rename) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix or '.png'}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    plt.close(fig)
    return path


def plot_lyapunov(result, ax=None, title: str | None = None):
    """Running estimate of each Lyapunov exponent against the steps counted so far.

    ``result`` is a `chaosgrad.spectra.LyapunovResult`. The converged values are written
    in the legend; a dashed line marks zero (the boundary of chaos).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    steps = result.history_steps
    x = steps * (result.dt or 1.0)
    for i in range(result.k):
        ax.plot(x, result.history[:, i], lw=1.5, label=f"λ{i + 1} = {result.exponents[i]:+.4f}")
    ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("time counted (after transient)" if result.dt else "steps counted (after "
                  "transient)")
    ax.set_ylabel(f"Lyapunov exponent ({result.units})")
    ax.set_title(title or f"{result.system.get('name')}: Lyapunov spectrum, "
                 f"{result.precision.get('dtype')}")
    if result.k <= 10:
        ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return ax


def plot_growth(result, ax=None, lyapunov: float | None = None, title: str | None = None):
    """Gradient norm against horizon (log scale): every seed, the geometric mean, the fit.

    ``result`` is a `chaosgrad.gradients.GrowthResult`. With ``lyapunov`` (the leading
    exponent, same units) a dashed line of slope λ1 through the first point shows the growth
    the spectrum predicts. Seeds whose gradient is not finite are marked on the top edge.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    scale = result.dt or 1.0
    h = result.horizons * scale
    norms = result.norms
    finite = np.isfinite(norms) & (norms > 0)
    for j in range(norms.shape[1]):
        ok = finite[:, j]
        ax.plot(h[ok], norms[ok, j], "o", color="C0", alpha=0.35, ms=4,
                label="seeds" if j == 0 else None)
    ax.plot(h, result.geomean_norm, "-", color="C0", lw=2, label="geometric mean")
    if np.isfinite(result.growth_rate):
        ok = np.isfinite(result.geomean_norm)
        x0, y0 = h[ok][0], result.geomean_norm[ok][0]
        ax.plot(h, y0 * np.exp(result.growth_rate * (h - x0)), ":", color="C1",
                label=f"fit: rate {result.growth_rate:+.3g} {result.units}")
        if lyapunov is not None and np.isfinite(lyapunov):
            pred = max(lyapunov, 0.0)
            ax.plot(h, y0 * np.exp(pred * (h - x0)), "--", color="C3",
                    label=f"predicted: max(λ1, 0) = {pred:.3g}")
    bad = ~np.isfinite(norms)
    if bad.any():
        top = ax.get_ylim()[1]
        for i in np.where(bad.any(axis=1))[0]:
            ax.annotate(f"{bad[i].sum()} non-finite", (h[i], top), fontsize=7, color="C3",
                        ha="center", va="bottom")
    ax.set_yscale("log")
    ax.set_xlabel("horizon T" + (" (time)" if result.dt else " (steps)"))
    ax.set_ylabel("‖∂L/∂θ‖")
    ax.set_title(title or f"{result.system.get('name')}: gradient norm vs horizon")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3, which="both")
    return ax
