"""Figures for results: Lyapunov convergence histories and gradient growth against horizon.

Each function draws onto new matplotlib axes (or the ones given) and can save a PNG. Importing
this module leaves the matplotlib backend alone, so plots show inline in Jupyter.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from chaosgrad.errors import InputError
from chaosgrad.io import PLOT_FORMATS, count_text, write_bytes


def save(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` atomically (write a temp file, then rename) and close it, in the format
    its extension names (.png, .svg or .pdf; any other is an InputError)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        plt.close(fig)
        raise InputError(
            f"cannot save a figure as {str(path)!r}: the format comes from the "
            f"extension; accepted: {', '.join('.' + f for f in PLOT_FORMATS)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_bytes(path, buf.getvalue())


PLOT_MAX = 1e300  # beyond this (or non-finite) a value is a gap: tick code overflows on it


def plottable(values) -> np.ndarray:
    """``values`` as float64 with NaN in place of ±Inf and of magnitudes above PLOT_MAX, so
    matplotlib's autoscaling and tick formatters never meet an infinite or overflowing
    limit (a tick at 1e308 × 10 is infinity, and its label cannot be formatted)."""
    v = np.array(values, np.float64, copy=True)
    with np.errstate(invalid="ignore"):
        v[~np.isfinite(v) | (np.abs(v) > PLOT_MAX)] = np.nan
    return v


def _within(y, ref) -> np.ndarray:
    """A model curve ``y`` (e.g. a fitted exponential) kept only where it stays within
    twenty decades of the finite positive data ``ref``: an extrapolated line must not drag
    the axis to 1e300."""
    y = plottable(y)
    r = plottable(ref)
    r = r[np.isfinite(r) & (r > 0)]
    if r.size:
        with np.errstate(invalid="ignore"):
            y[(y > r.max() * 1e20) | (y < r.min() * 1e-20)] = np.nan
    return y


def log_scale(ax, values, axis: str = "y", what: str = "values") -> bool:
    """Put ``axis`` on a log scale if ``values`` hold a positive finite number; otherwise
    leave it linear and say in the panel that there is nothing positive and finite to draw
    (matplotlib would fail with "Data cannot be log-scaled"). Returns whether it did."""
    v = plottable(np.ravel(values)) if np.size(values) else np.zeros(0)
    if np.any(np.isfinite(v) & (v > 0)):
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        return True
    ax.text(
        0.5,
        0.5,
        f"no positive finite {what} to draw\n(all NaN/Inf or ≤ 0)",
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=9,
        color="C3",
    )
    return False


def plot_lyapunov(result, ax=None, title: str | None = None):
    """Running estimate of each Lyapunov exponent against the steps counted so far.

    ``result`` is a `chaosgrad.spectra.LyapunovResult`. The converged values are written
    in the legend; a dashed line marks zero (the boundary of chaos).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    steps = result.history_steps
    x = plottable(steps * (result.dt or 1.0))
    hist = plottable(result.history)
    for i in range(result.k):
        ax.plot(x, hist[:, i], lw=1.5, label=f"λ{i + 1} = {result.exponents[i]:+.4f}")
    ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
    drawn = np.isfinite(hist).any(axis=1) & np.isfinite(x)
    log_scale(ax, x[drawn], "x", "exponents (the run overflowed)")
    ax.set_xlabel(
        "time counted (after transient)" if result.dt else "steps counted (after transient)"
    )
    ax.set_ylabel(f"Lyapunov exponent ({result.units})")
    ax.set_title(
        title or f"{result.system.get('name')}: Lyapunov spectrum, {result.precision.get('dtype')}"
    )
    if result.k <= 10:
        ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return ax


def _axes_and_horizons(result, ax):
    """The axes to draw on (new ones if None) and the horizons in the result's time units."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    return ax, result.horizons * (result.dt or 1.0)


def _rate_lines(ax, h, y, rate, interval, units, predicted, predicted_label):
    """Through the first finite point of ``y``: the fitted exponential (dotted, its rate and
    95% interval in the legend) and the one the spectrum predicts (dashed), if known."""
    y = plottable(y)
    ok = np.isfinite(y) & (y > 0)
    if not ok.any():
        return
    x0, y0 = h[ok][0], y[ok][0]
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(rate):
            ci = (
                f" [{interval.low:+.3g}, {interval.high:+.3g}]"
                if interval is not None and interval.finite
                else ""
            )
            ax.plot(
                h,
                _within(y0 * np.exp(rate * (h - x0)), y),
                ":",
                color="C1",
                label=f"fit: rate {rate:+.3g}{ci} {units}",
            )
        if predicted is not None and np.isfinite(predicted):
            ax.plot(
                h,
                _within(y0 * np.exp(predicted * (h - x0)), y),
                "--",
                color="C3",
                label=predicted_label,
            )


def plot_growth(result, ax=None, lyapunov: float | None = None, title: str | None = None):
    """Gradient norm against horizon (log scale): every seed, the geometric mean, the fit.

    ``result`` is a `chaosgrad.gradients.GrowthResult`. With ``lyapunov`` (the leading
    exponent, same units) a dashed line of slope λ1 through the first point shows the growth
    the spectrum predicts. Seeds whose gradient is not finite are marked on the top edge.
    """
    ax, h = _axes_and_horizons(result, ax)
    norms = np.asarray(result.norms, np.float64)
    shown = plottable(norms)
    finite = np.isfinite(shown) & (shown > 0)
    for j in range(norms.shape[1]):
        ok = finite[:, j]
        ax.plot(
            h[ok],
            shown[ok, j],
            "o",
            color="C0",
            alpha=0.35,
            ms=4,
            label="seeds" if j == 0 else None,
        )
    ax.plot(h, plottable(result.geomean_norm), "-", color="C0", lw=2, label="geometric mean")
    pred = None if lyapunov is None else max(lyapunov, 0.0)
    _rate_lines(
        ax,
        h,
        result.geomean_norm,
        result.growth_rate,
        getattr(result, "growth_interval", None),
        result.units,
        pred,
        f"predicted from the spectrum: {pred:.3g}" if pred is not None else "",
    )
    bad = ~np.isfinite(norms)
    if bad.any():
        for i in np.where(bad.any(axis=1))[0]:  # on the top edge, in axes coordinates
            ax.annotate(
                f"{bad[i].sum()} non-finite",
                (h[i], 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="C3",
                ha="center",
                va="bottom",
            )
    log_scale(ax, shown, "y", "gradient norms")
    ax.set_xlabel("horizon T" + (" (time)" if result.dt else " (steps)"))
    ax.set_ylabel("‖∂L/∂θ‖")
    ax.set_title(title or f"{result.system.get('name')}: gradient norm vs horizon")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_variance(
    result,
    ax=None,
    lyapunov: float | None = None,
    critical: float | None = None,
    limit: float | None = None,
    title: str | None = None,
):
    """Variance across seeds of the gradient against horizon (log scale), with the fit.

    With ``lyapunov`` a dashed line of slope 2·max(λ1, 0) shows the predicted growth; with
    ``critical`` a vertical line marks the critical horizon.
    """
    ax, h = _axes_and_horizons(result, ax)
    scale = result.dt or 1.0
    v = plottable(result.variance)
    ok = np.isfinite(v) & (v > 0)
    ax.plot(h[ok], v[ok], "o-", color="C2", lw=2, label="variance across seeds")
    pred = None if lyapunov is None else 2 * max(lyapunov, 0.0)
    _rate_lines(
        ax,
        h,
        np.where(ok, v, np.nan),
        result.variance_rate,
        getattr(result, "variance_rate_interval", None),
        result.units,
        pred,
        f"predicted: 2 × {pred / 2:.3g}" if pred is not None else "",
    )
    if critical is not None and critical * scale <= h.max() * 1.05:
        ax.axvline(
            critical * scale,
            color="C3",
            lw=1,
            alpha=0.6,
            label=f"critical T ≈ {count_text(critical)} (variance ×{limit or 100:g})",
        )
    log_scale(ax, v, "y", "variances")
    ax.set_xlabel("horizon T" + (" (time)" if result.dt else " (steps)"))
    ax.set_ylabel("tr Cov[∂L/∂θ] across seeds")
    ax.set_title(title or "gradient variance vs horizon")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_slices(result, ax=None, title: str | None = None):
    """Meta-loss along a random direction in θ, one curve per horizon (randomness fixed).

    Each curve is shifted and scaled to [0, 1] so the shapes compare across horizons; the
    legend gives each curve's range and count of local extrema. Non-finite points are gaps.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    nh = len(result.horizons)
    for i, h in enumerate(result.horizons):
        y = plottable(result.losses[i])
        ok = np.isfinite(y)
        if not ok.any():
            continue
        lo, hi = np.min(y[ok]), np.max(y[ok])
        with np.errstate(over="ignore", invalid="ignore"):
            z = plottable((y - lo) / (hi - lo) if hi - lo > 0 else y * 0)
        ax.plot(
            result.shifts,
            np.where(ok, z, np.nan) + 1.1 * i,
            color=cmap(i / max(nh - 1, 1)),
            lw=1.3,
            label=f"T={int(h)}: range {hi - lo:.2e}, {result.extrema[i]} extrema",
        )
    ax.set_xlabel("shift s along a random unit direction (θ + s·d)")
    ax.set_ylabel("meta-loss (each curve scaled to [0, 1], offset by T)")
    ax.set_yticks([])
    ax.set_title(title or "loss slices, randomness fixed")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)
    return ax


def plot_diagnosis(d, out_dir) -> dict:
    """The diagnosis figures: a 4-panel summary and each panel alone; returns name → path.
    Panels with nothing positive and finite to draw say so instead of failing."""
    out = Path(out_dir)
    lam = float(d.predicted_rate)
    name = d.system.get("name")
    figs = {}
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    plot_lyapunov(d.lyapunov, ax=axes[0, 0])
    iv = d.lyapunov_interval
    if iv.finite and max(abs(iv.low), abs(iv.high)) < PLOT_MAX:
        axes[0, 0].axhspan(
            iv.low,
            iv.high,
            color="C0",
            alpha=0.15,
            label=f"λ1 95% interval [{iv.low:+.3g}, {iv.high:+.3g}]",
        )
        axes[0, 0].legend(fontsize=8, loc="best")
    plot_growth(d.growth, ax=axes[0, 1], lyapunov=lam)
    plot_variance(
        d.growth,
        ax=axes[1, 0],
        lyapunov=lam,
        critical=d.critical_horizon,
        limit=d.variance_growth_limit,
    )
    plot_slices(d.slices, ax=axes[1, 1])
    fig.suptitle(f"{name}: verdict {d.verdict.upper()}", fontsize=13)
    fig.tight_layout()
    figs["summary"] = str(save(fig, out / "summary.png"))
    figs["lyapunov"] = str(save(plot_lyapunov(d.lyapunov).figure, out / "lyapunov.png"))
    figs["growth"] = str(save(plot_growth(d.growth, lyapunov=lam).figure, out / "growth.png"))
    figs["variance"] = str(
        save(
            plot_variance(
                d.growth, lyapunov=lam, critical=d.critical_horizon, limit=d.variance_growth_limit
            ).figure,
            out / "variance.png",
        )
    )
    figs["slices"] = str(save(plot_slices(d.slices).figure, out / "slices.png"))
    return figs


def _errbar(ax, x, ivs, color, label, marker="o", sqrt=False):
    """Points with 95% error bars from `Interval`s; an interval whose low end is 0 (not
    resolved from zero) is drawn as a downward triangle at its upper bound."""
    f = np.sqrt if sqrt else (lambda v: v)
    first = True
    for xi, iv in zip(x, ivs, strict=True):
        v, lo, hi = (
            float(f(max(a, 0.0))) if np.isfinite(a) else np.nan for a in (iv.value, iv.low, iv.high)
        )
        if not np.isfinite(hi) or hi <= 0:
            continue
        if lo <= 0 or v <= 0:
            ax.plot(
                [xi],
                [hi],
                "v",
                color=color,
                ms=8,
                label=f"{label} (upper bound)" if first else None,
            )
        else:
            ax.errorbar(
                [xi],
                [v],
                yerr=[[v - lo], [hi - v]],
                fmt=marker,
                color=color,
                capsize=4,
                ms=6,
                label=label if first else None,
            )
        first = False


def plot_comparison(c):
    """Estimators side by side (log scale), each number with its 95% interval: bias and the
    spread of one estimate, the relative error at the budget, and the cost.

    ``c`` is a `chaosgrad.app.compare.Comparison`; estimators are in ranking order, best
    first; a bias not resolved from zero is a triangle at its upper bound (never a bar
    drawn at a fake floor); tied estimators are named in the title.
    """
    by = {s.name: s for s in c.stats}
    order = [by[n] for n in c.ranking]
    names = [s.name for s in order]
    x = np.arange(len(order))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    _errbar(axes[0], x - 0.12, [s.bias for s in order], "C0", "bias ‖E[ĝ] − g*‖")
    _errbar(
        axes[0],
        x + 0.12,
        [s.variance for s in order],
        "C1",
        "std of one estimate √tr Cov",
        marker="s",
        sqrt=True,
    )
    if c.reference_norm > 0:
        axes[0].axhline(c.reference_norm, color="k", ls="--", lw=0.8, label="‖g*‖ (reference)")
    if c.reference_se > 0:
        axes[0].axhline(
            c.reference_se, color="0.5", ls=":", lw=0.8, label="reference's standard error"
        )
    log_scale(
        axes[0],
        [c.reference_norm, c.reference_se]
        + [s.bias.high for s in order]
        + [s.variance.value for s in order],
        "y",
        "values",
    )
    axes[0].set_title("bias and spread of one estimate [95%]")
    _errbar(axes[1], x, [s.relative_error for s in order], "C2", "relative RMS error")
    axes[1].axhline(1.0, color="k", ls="--", lw=0.8, label="error = ‖g*‖")
    log_scale(axes[1], [s.relative_error.high for s in order], "y", "errors")
    axes[1].set_title(f"relative RMS error at a budget of {c.budget} unroll steps [95%]")
    steps = [s.steps for s in order]
    axes[2].bar(x, steps, color="C4")
    log_scale(axes[2], steps, "y", "costs")
    axes[2].set_title("unroll steps per estimate (label: s per replicate)")
    for i, s in enumerate(order):
        axes[2].annotate(
            f"{s.seconds * 1e3:.2g} ms", (i, s.steps), ha="center", va="bottom", fontsize=8
        )
    for ax in axes:
        ax.set_xticks(x, names)
        ax.grid(alpha=0.3, axis="y", which="both")
    axes[0].legend(fontsize=7)
    tie = (
        f"TIE at 95%: {', '.join(c.tied)}"
        if len(c.tied) > 1
        else f"best: {c.tied[0]} (separated at 95%)"
    )
    target = getattr(c, "target", "")
    fig.suptitle(
        f"{c.system.get('name')}, T = {c.horizon}, target: {target} gradient: "
        f"estimators ranked by error per compute (left = best); {tie}\nreference "
        f"{c.reference.split(';')[0]}",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def show_png(path: str | os.PathLike) -> None:
    """Show a saved PNG inline in Jupyter; outside a notebook, print its path."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        print(path)
        return
    if get_ipython() is None:
        print(path)
    else:
        display(Image(filename=str(path)))
