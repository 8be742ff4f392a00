"""Figure 1 of the paper: on l(x) = 0.1 sin(x w/π) + (x/10)² + 0.1 smoothed by N(0, σ²),
the reparameterisation (backprop) gradient's variance grows like w² while ES stays flat.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad.system import StepOut, System
from chaosgrad.unroll import unrolled_loss

SIGMA = 0.3
SLOPE_FROM = 10.0  # the w² growth is fitted above this frequency
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"samples": 1000, "xs": 101, "ws": 21},
    "paper": {"samples": 10000, "xs": 401, "ws": 41},
}


def toy_loss(x, w):
    """The paper's toy loss l(x) = 0.1 sin(x w / π) + (x/10)² + 0.1."""
    return 0.1 * jnp.sin(x * w / jnp.pi) + (x / 10) ** 2 + 0.1


def smoothed_loss(x, w, sigma=SIGMA):
    """E[l(x + ε)], ε ~ N(0, σ²), in closed form."""
    a = w / np.pi
    return 0.1 * np.sin(a * x) * np.exp(-0.5 * (a * sigma) ** 2) + (x**2 + sigma**2) / 100 + 0.1


def reparam_variance(x, w, sigma=SIGMA):
    """Var[l'(x + ε)] in closed form (the reparameterisation gradient's variance).

    With a = w/π, g = 0.1a cos(a(x+ε)) + (x+ε)/50; the moments of cos under a Gaussian and
    Stein's lemma E[ε f(ε)] = σ² E[f'(ε)] give every term.
    """
    a = w / np.pi
    e1 = np.exp(-0.5 * (a * sigma) ** 2)
    m_cos = np.cos(a * x) * e1
    m_cos2 = 0.5 * (1 + np.cos(2 * a * x) * e1**4)
    m_ecos = -(sigma**2) * a * np.sin(a * x) * e1
    mean = 0.1 * a * m_cos + x / 50
    second = (
        (0.1 * a) ** 2 * m_cos2 + 2 * 0.1 * a / 50 * (x * m_cos + m_ecos) + (x**2 + sigma**2) / 2500
    )
    return second - mean**2


def toy_system(w: float, noisy: bool) -> System:
    """The toy as a one-step `System`: θ = x; with ``noisy`` the state is ε ~ N(0, σ²)."""

    def init(key, theta):
        return (
            SIGMA * jax.random.normal(key, (), jnp.result_type(float))
            if noisy
            else jnp.zeros((), jnp.result_type(float))
        )

    def step(eps, theta, key):
        return eps, StepOut(loss=toy_loss(theta + eps, w))

    return System(init, step, name=f"toy w={w:g}", theta=jnp.asarray(0.0), horizon=1)


def _variances(w: float, xs: np.ndarray | jax.Array, samples: int, key) -> dict:
    """Max over x of the reparameterisation and antithetic-ES gradient variances."""
    noisy, clean = toy_system(w, True), toy_system(w, False)
    keys = jax.random.split(key, samples)
    xs = jnp.asarray(xs)

    grad = jax.grad(lambda x, k: unrolled_loss(noisy, x, k, 1))
    rep = jax.vmap(lambda x: jax.vmap(lambda k: grad(x, k))(keys))(xs)

    eps = SIGMA * jax.random.normal(jax.random.fold_in(key, 1), (samples,))

    def es_one(x, e):
        lp = unrolled_loss(clean, x + e, keys[0], 1)
        lm = unrolled_loss(clean, x - e, keys[0], 1)
        return e * (lp - lm) / (2 * SIGMA**2)

    es = jax.vmap(lambda x: jax.vmap(lambda e: es_one(x, e))(eps))(xs)
    rep_var = np.var(np.asarray(rep), axis=1, ddof=1)
    es_var = np.var(np.asarray(es), axis=1, ddof=1)
    exact = reparam_variance(np.asarray(xs), w)
    return {
        "rep_max": rep_var.max(),
        "es_max": es_var.max(),
        "exact_rep_max": exact.max(),
        "rep_mean_grad_err": np.abs(
            np.asarray(rep).mean(axis=1) - np.asarray(es).mean(axis=1)
        ).max(),
    }


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """The experiment: curves for w = 1, 4, 10 and the variance sweep over w."""
    from chaosgrad.progress import progress_bar

    size = SIZES[scale]
    x_plot = np.linspace(-10, 10, 801)
    curves = {}
    for w in (1.0, 4.0, 10.0):
        curves[f"loss_w{w:g}"] = np.asarray(toy_loss(jnp.asarray(x_plot), w))
        curves[f"smooth_w{w:g}"] = smoothed_loss(x_plot, w)
    ws = np.logspace(-2, 2, size["ws"])
    xs = np.linspace(-10, 10, size["xs"])
    key = jax.random.PRNGKey(0)
    rows = []
    with progress_bar(len(ws), "figure toy", progress, min_total=1) as bar:
        for i, w in enumerate(ws):
            rows.append(
                store.part(
                    f"w{i}",
                    lambda w=w, i=i: _variances(
                        float(w), xs, size["samples"], jax.random.fold_in(key, i)
                    ),
                )
            )
            bar.update(1)
    results = {
        "x_plot": x_plot,
        "ws": ws,
        **curves,
        **{k: np.array([float(r[k]) for r in rows]) for k in rows[0]},
    }
    meta = {
        "sigma": SIGMA,
        "sizes": size,
        "seed": 0,
        "note": "x in [-10, 10]; variance maximised over a grid of x; antithetic ES",
        "summary": summary(results),
    }
    return results, meta


def summary(results: dict) -> dict:
    """The numbers the README quotes, from the results alone: the log–log slope of the
    reparameterisation variance against w over w > 10 (where the sine's term, ∝ w², has
    taken over from the quadratic's; the closed form's slope alongside), ES's range, and
    the w-grid interval where backprop's variance first exceeds ES's."""
    ws = np.asarray(results["ws"])
    upper = ws > SLOPE_FROM
    rep, exact, es = (np.asarray(results[k]) for k in ("rep_max", "exact_rep_max", "es_max"))
    above = np.flatnonzero(rep > es)
    first = int(above[0]) if above.size else None

    def slope(y):  # None when the grid has under two frequencies above SLOPE_FROM
        if upper.sum() < 2:
            return None
        return float(np.polyfit(np.log(ws[upper]), np.log(y[upper]), 1)[0])

    return {
        "rep_slope": slope(rep),
        "exact_slope": slope(exact),
        "es_min": float(es.min()),
        "es_max": float(es.max()),
        "crossing_between": (
            None if first is None or first == 0 else [float(ws[first - 1]), float(ws[first])]
        ),
    }


def draw(results: dict, meta: dict, path) -> None:
    """Left: l and its smoothing for w = 1, 4, 10. Right: max gradient variance vs w."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = results["x_plot"]
    for i, w in enumerate((1, 4, 10)):
        a.plot(x, results[f"loss_w{w}"], color=f"C{i}", lw=0.8, alpha=0.6, label=f"l(x), w={w}")
        a.plot(x, results[f"smooth_w{w}"], color=f"C{i}", lw=2.2, label=f"smoothed, w={w}")
    a.set_xlabel("x")
    a.set_ylabel("loss")
    a.set_title(f"toy loss and its Gaussian smoothing (σ = {meta['sigma']})")
    a.legend(fontsize=8, ncol=2)
    ws = results["ws"]
    b.loglog(ws, results["rep_max"], "o-", ms=3, label="reparameterisation (backprop)")
    b.loglog(ws, results["exact_rep_max"], "k:", lw=1, label="reparameterisation, closed form")
    b.loglog(ws, results["es_max"], "s-", ms=3, label="ES (antithetic)")
    b.set_xlabel("frequency w")
    b.set_ylabel("max over x of gradient variance")
    b.set_title(f"gradient variance vs frequency ({meta['sizes']['samples']} samples per x)")
    b.legend(fontsize=8)
    b.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, path)
