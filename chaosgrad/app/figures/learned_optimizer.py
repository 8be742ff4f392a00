"""Figure 3 of the paper: meta-learning a per-parameter MLP learned optimizer. With the data
batch and the inner initialisation fixed, the meta-loss turns jagged along a direction in θ as
the unroll grows; smoothing over θ rescues it; the meta-gradient's variance over
θ-perturbations grows with the unroll length, faster where the optimizer trains aggressively.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad import systems
from chaosgrad.gradients import count_extrema, growth_fits, loss_slice, random_direction
from chaosgrad.roughness import mean_roughness, roughness, smoothness, turn_indices

# float32 at quick scale: the 401-point slices through 512 steps are ~2e5 learned-optimizer
# steps (each one an MLP over 3,466 inner weights), twice as fast as float64 on a CPU; the
# paper's learned_optimization code runs in float32 too. Paper scale (for a GPU) is float64.
SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "unrolls": [8, 32, 128, 256, 512],
        "points": 401,
        "candidates": 10,
        "candidate_points": 41,
        "candidate_T": 128,
        "smooth_T": 128,
        "smooth_points": 101,
        "smooth_samples": 32,
        "smooth_std": 0.05,
        "var_horizons": [10, 30, 60, 90, 120, 180, 240],
        "var_samples": 16,
        "dtype": "float32",
    },
    "paper": {
        "unrolls": [8, 32, 128, 256, 512, 1024],
        "points": 801,
        "candidates": 10,
        "candidate_points": 41,
        "candidate_T": 128,
        "smooth_T": 256,
        "smooth_points": 401,
        "smooth_samples": 32,
        "smooth_std": 0.05,
        "var_horizons": list(range(10, 241, 10)),
        "var_samples": 64,
        "dtype": "float64",
    },
}
SHIFTS = (0.0, 0.002, 0.005, 0.008)
RANGE = 0.01
# the paper's θ-perturbation for (c) (and its (b)); our (b) uses each size's smooth_std, 0.05:
# at 0.01 the 128-step mean lay within 0.036 of the unperturbed slice's range (noise 0.014),
# its roughness unchanged (0.185 vs 0.187), so the panel showed no smoothing
SMOOTH_STD = 0.01
# a turn of the slice counts as an extremum when it stands out by more than this (mean
# log-loss): in float32 the flat part of a slice wiggles by 1e-5..1e-4 from shift to shift
EXTREMA_TOL = 1e-3
# θ's candidates are ranked by roughness only when their slice spans more than this (mean
# log-loss): ten times EXTREMA_TOL, far above float32's 1e-5..1e-4 wiggles on a flat slice
MIN_RANGE = 0.01
SEED = 0
DIFFERS = [
    "data: scikit-learn's 8x8 digits (64 inputs, 1,438 training images) instead of MNIST "
    "(784 inputs); the inner MLP is 64-32-32-10 (3,466 weights), the learned optimizer "
    "19-32-32-2 (1,762 weights) as in the paper",
    "one fixed training batch of 128 and one fixed inner initialisation (the paper's setup)",
    "theta and the direction: of {candidates} random (init, direction) candidates, the one "
    "whose {candidate_T}-step slice ({candidate_points} shifts) is roughest relative to its "
    "range, the direction's sign chosen so the slice's minimum lies at positive shifts (the "
    "paper picked among ~10 'to highlight the instability', rule unstated)",
    "sizes: {points} shifts per slice (unrolls {unrolls}); smoothing over {smooth_samples} "
    "perturbations θ + N(0, {smooth_std}²) at {smooth_T} steps and {smooth_points} shifts; "
    "the variance over {var_samples} perturbations θ + N(0, 0.01²) at unrolls {var_horizons}",
    "precision: {dtype}",
]


def make_system(dtype: str = "float32", seed: int = SEED):
    """The paper's setup on offline data: sklearn digits instead of MNIST (a 2×32 ReLU MLP),
    one fixed batch of 128 reused at every step, meta-loss the mean of log training loss."""
    return systems.make(
        "lopt",
        task="digits_mlp",
        optimizer="mlp",
        fixed_batch=True,
        batch_size=128,
        log_loss=True,
        inner_steps=128,
        dtype=dtype,
        seed=seed,
    )


def _shifted(theta, direction, s):
    return jax.tree_util.tree_map(lambda t, d: t + s * d, theta, direction)


def _flat_size(theta) -> int:
    from jax.flatten_util import ravel_pytree

    return int(ravel_pytree(theta)[0].size)


def _line(system, theta, direction, horizons, key, points):
    """Meta-losses (len(horizons), points) at θ + s·d, s in [−RANGE, RANGE], key fixed.

    `loss_slice` normalises d to unit norm, so its radius is RANGE·‖d‖: a shift s in the
    paper's units (‖d‖ = number of weights) moves θ by s·‖d‖ in norm.
    """
    norm = float(np.sqrt(sum(float(jnp.sum(x * x)) for x in jax.tree_util.tree_leaves(direction))))
    return loss_slice(
        system,
        theta,
        horizons=horizons,
        key=key,
        direction=direction,
        radius=RANGE * norm,
        points=points,
    ).losses


def choose_theta(system, candidates: int, T: int, points: int, key):
    """Pick θ and the direction by an instability rule (the paper picked among ~10 "to
    highlight the instability" without saying how): among ``candidates`` random learned-
    optimizer inits (the system's init with seeds 0, 1, …), each with its own random
    direction of norm = number of weights, take the one whose T-step slice (randomness
    fixed, ``points`` shifts) is roughest relative to its own range
    (`chaosgrad.roughness.roughness`), among the slices whose range exceeds `MIN_RANGE`
    (a flat float32 slice's wiggles would otherwise count as rough); flip the direction so
    the slice's minimum lies at positive shifts. Returns (theta, direction, report) with every
    candidate's numbers."""
    from chaosgrad.systems.lopt import make_optimizer

    dtype = jax.tree_util.tree_leaves(system.theta)[0].dtype
    opt = make_optimizer("mlp", dtype=dtype)
    n = _flat_size(system.theta)
    rows, best = [], None
    for c in range(candidates):
        # the same θ the lopt system builds with seed=c (its init key is fold_in(root, 1))
        theta = opt.init_theta(jax.random.fold_in(jax.random.PRNGKey(c), 1))
        d = random_direction(theta, jax.random.PRNGKey(1000 + c), norm=float(n))
        y = _line(system, theta, d, [T], key, points)[0]
        mid = points // 2
        finite = bool(np.all(np.isfinite(y)))
        # a slice with a NaN/Inf is not ranked (its roughness is undefined), and is counted
        rough = roughness(y) if finite else float("nan")
        span = float(np.ptp(y)) if finite else float("nan")
        i = int(np.argmin(y)) if finite else mid
        s_min = float(np.linspace(-RANGE, RANGE, points)[i])
        rows.append(
            {
                "seed": c,
                "direction_key": 1000 + c,
                "at_0": float(y[mid]),
                "min": float(y[i]),
                "argmin_shift": s_min,
                "range": span,
                # the fall to the minimum: the earlier rule, by which lopt_estimators
                # still ranks its picks
                "drop": float(y[mid] - y[i]) if finite else float("nan"),
                "roughness": rough,
                "nonfinite": int((~np.isfinite(y)).sum()),
            }
        )
        if finite and span > MIN_RANGE and (best is None or rough > best[0]):
            best = (rough, c, theta, d, s_min)
    if best is None:
        raise RuntimeError(f"no candidate slice was finite with a range above {MIN_RANGE}")
    _, c, theta, d, s_min = best
    sign = -1.0 if s_min < 0 else 1.0
    d = jax.tree_util.tree_map(lambda x: sign * x, d)
    report = {
        "rule": f"the roughest {T}-step slice at {points} shifts (chaosgrad.roughness:"
        " RMS about a degree-4 fit over the slice's range) among "
        f"{candidates} (init seed, direction key) candidates whose slice is "
        f"finite with a range above {MIN_RANGE}; direction sign flipped so the "
        "slice's minimum is at s > 0",
        "chosen_seed": c,
        "direction_key": 1000 + c,
        "direction_sign": sign,
        "chosen_roughness": best[0],
        "candidates": rows,
    }
    return theta, d, report


def chosen_point(system, size: dict, key, store):
    """θ, the direction and the choice report, by `choose_theta` with ``size``'s candidates,
    saved as the store's part "choice" (so a resumed run, or another figure on the same
    point, does not choose again)."""
    from jax.flatten_util import ravel_pytree

    def choose():
        th, d, rep = choose_theta(
            system, size["candidates"], size["candidate_T"], size["candidate_points"], key
        )
        return {
            "theta": ravel_pytree(th)[0],
            "direction": ravel_pytree(d)[0],
            "report": np.asarray(json.dumps(rep)),
        }

    chosen = store.part("choice", choose)
    unravel = ravel_pytree(system.theta)[1]
    return (
        unravel(jnp.asarray(chosen["theta"])),
        unravel(jnp.asarray(chosen["direction"])),
        json.loads(str(chosen["report"])),
    )


@functools.lru_cache(maxsize=8)
def _jit_grads(system, horizons: tuple, remat_chunk: int):
    """One compiled ``(thetas, key) -> ∇L_T for every T in horizons`` (leading axes:
    sample, horizon), vmapped over a batch of θ with the run key shared.

    One forward unroll of max(T) steps per θ and one vector–Jacobian product per horizon
    (cotangent: the meta-loss weights of the first T steps), so a single compilation serves
    every horizon and shift. A non-finite loss after step T would leak into the T-horizon
    gradient as 0·Inf = NaN; such samples are counted as non-finite, never zeroed.
    """
    from chaosgrad.unroll import loss_weights, pure_unroll

    t_max = max(horizons)
    w = np.zeros((len(horizons), t_max))
    for i, T in enumerate(horizons):
        w[i, :T] = np.asarray(loss_weights(system.meta_loss, np.arange(T), T), np.float64)

    def one(th, key):
        def losses(th):
            return pure_unroll(system, th, key, t_max, remat_chunk=remat_chunk)[1]

        ell, pull = jax.vjp(losses, th)
        return jax.vmap(lambda c: pull(c)[0])(jnp.asarray(w, ell.dtype))

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def perturbed_gradient_variance(
    system,
    theta,
    horizons,
    *,
    samples: int,
    std: float,
    key,
    perturbation_key,
    remat_chunk: int = 16,
) -> dict:
    """Variance of the meta-gradient over θ-perturbations, the rest of the randomness fixed.

    For each T: g_i = ∇L_T(θ + std·ε_i; key), ε_i ~ N(0, I) from ``perturbation_key``
    (i < ``samples``; the same ε_i at every T), with the run ``key`` — the data batch and
    the inner initialisation — the same for every sample. This is the paper's Figure 3(c)
    (its notebook), not the variance across run keys.

    Returns a dict of arrays over ``horizons``: ``variance`` tr Cov_i[g_i] (ddof 1, over
    the samples whose gradient is finite), ``norm`` the mean ‖g_i‖, ``nonfinite`` how many
    samples had a NaN/Inf gradient entry (excluded and counted, never zeroed).
    """
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(theta)
    eps = jax.random.normal(perturbation_key, (int(samples), flat.size), flat.dtype)
    thetas = jax.vmap(unravel)(flat[None, :] + jnp.asarray(std, flat.dtype) * eps)
    hs = tuple(int(h) for h in horizons)
    grads = _jit_grads(system, hs, min(int(remat_chunk), max(hs)))(thetas, key)
    flat_g = np.asarray(jax.vmap(jax.vmap(lambda t: ravel_pytree(t)[0]))(grads), np.float64)
    variance, norm, bad = [], [], []
    for j in range(len(hs)):
        g = flat_g[:, j]
        ok = np.all(np.isfinite(g), axis=1)
        bad.append(int((~ok).sum()))
        g = g[ok]
        if len(g) < 2:
            variance.append(np.nan)
            norm.append(np.nan)
            continue
        # centred on the first sample first: identical samples give exactly 0
        d = g - g[:1]
        variance.append(float(np.sum(np.var(d, axis=0, ddof=1))))
        norm.append(float(np.mean(np.linalg.norm(g, axis=1))))
    return {
        "variance": np.asarray(variance),
        "norm": np.asarray(norm),
        "nonfinite": np.asarray(bad),
    }


def smoothing_change(base, samples) -> dict:
    """How far smoothing moves a slice: the RMS of (mean of ``samples`` − ``base``) over the
    slice, relative to ``base``'s range, against ``noise`` — the RMS standard error of that
    mean (its samples' spread / √N) over the same range. ``changed``: the move exceeds
    `chaosgrad.roughness.RESOLVED_FACTOR` noises, so more samples would not remove it.
    Samples with a NaN/Inf are left out and counted."""
    from chaosgrad.roughness import RESOLVED_FACTOR

    samples = np.asarray(samples, np.float64)
    base = np.asarray(base, np.float64)
    ok = np.all(np.isfinite(samples), axis=1)
    good = samples[ok]
    span = float(np.ptp(base)) if np.all(np.isfinite(base)) else float("nan")
    if len(good) < 2 or not np.isfinite(span) or span == 0:
        nan = float("nan")
        return {
            "rms": nan,
            "noise": nan,
            "changed": False,
            "samples": int(len(good)),
            "nonfinite_samples": int((~ok).sum()),
        }
    rms = float(np.sqrt(np.mean((good.mean(axis=0) - base) ** 2))) / span
    noise = float(np.sqrt(np.mean(np.var(good, axis=0, ddof=1)) / len(good))) / span
    return {
        "rms": rms,
        "noise": noise,
        "changed": bool(rms > RESOLVED_FACTOR * noise),
        "samples": int(len(good)),
        "nonfinite_samples": int((~ok).sum()),
        "resolved_factor": RESOLVED_FACTOR,
    }


def count_turns(y, tol: float) -> int:
    """How many local extrema of ``y`` stand out by more than ``tol`` (see `turn_indices`);
    ``tol = 0`` counts every sign change of the first difference, like
    `chaosgrad.gradients.count_extrema`."""
    if tol <= 0:
        return count_extrema(y)
    return len(turn_indices(y, tol))


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Choose θ; (a) slices per unroll length; (b) smoothed slice; (c) variance vs unroll."""

    from chaosgrad.progress import progress_bar

    size = SIZES[scale]
    system = make_system(size["dtype"])
    key = jax.random.PRNGKey(SEED)  # the run key: data batch and inner init, fixed throughout
    n_params = _flat_size(system.theta)
    out = {}
    with progress_bar(3 + len(SHIFTS), "figure learned_optimizer", progress, min_total=1) as bar:
        theta, direction, report = chosen_point(system, size, key, store)
        bar.update(1)
        a = store.part(
            "slices",
            lambda: {
                "losses": _line(system, theta, direction, size["unrolls"], key, size["points"])
            },
        )
        out["slice_losses"] = a["losses"]
        bar.update(1)
        pkey = jax.random.PRNGKey(SEED + 7)  # the θ-perturbations of (b) and (c)
        # (b)'s unperturbed slice at its own shifts, the curve the smoothing is judged against
        base = store.part(
            "smooth_base",
            lambda: {
                "losses": _line(
                    system, theta, direction, [size["smooth_T"]], key, size["smooth_points"]
                )[0]
            },
        )
        out["smooth_base"] = base["losses"]
        smooth = []
        for m in range(size["smooth_samples"]):
            eps = random_direction(theta, jax.random.fold_in(pkey, m), norm=None)
            th = jax.tree_util.tree_map(lambda t, e: t + size["smooth_std"] * e, theta, eps)
            part = store.part(
                f"smooth{m}",
                lambda th=th: {
                    "losses": _line(
                        system, th, direction, [size["smooth_T"]], key, size["smooth_points"]
                    )[0]
                },
            )
            smooth.append(part["losses"])
        out["smooth_samples"] = np.stack(smooth)
        bar.update(1)
        for i, s in enumerate(SHIFTS):
            th = _shifted(theta, direction, s)
            part = store.part(
                f"variance{i}",
                lambda th=th: perturbed_gradient_variance(
                    system,
                    th,
                    size["var_horizons"],
                    samples=size["var_samples"],
                    std=SMOOTH_STD,
                    key=key,
                    perturbation_key=jax.random.fold_in(pkey, 10_000),
                ),
            )
            out[f"variance_{i}"] = part["variance"]
            out[f"norm_{i}"] = part["norm"]
            out[f"nonfinite_{i}"] = part["nonfinite"]
            bar.update(1)
    shifts = np.linspace(-RANGE, RANGE, size["points"])
    out["shifts"] = shifts
    out["smooth_shifts"] = np.linspace(-RANGE, RANGE, size["smooth_points"])
    out["unrolls"] = np.asarray(size["unrolls"])
    out["var_horizons"] = np.asarray(size["var_horizons"])
    mid = size["points"] // 2
    sl = out["slice_losses"]
    slices = {
        str(t): {
            "extrema": count_turns(sl[i], EXTREMA_TOL),
            "extrema_raw": count_extrema(sl[i]),
            "at_0": float(sl[i, mid]),
            "min": float(np.nanmin(sl[i])),
            "argmin_shift": float(shifts[int(np.nanargmin(sl[i]))]),
            "roughness": roughness(sl[i]),
            "nonfinite": int((~np.isfinite(sl[i])).sum()),
        }
        for i, t in enumerate(size["unrolls"])
    }
    mean = np.mean(out["smooth_samples"], axis=0)
    smoothing = {
        "std": size["smooth_std"],
        "base_roughness": roughness(out["smooth_base"]),
        "base_extrema": count_turns(out["smooth_base"], EXTREMA_TOL),
        "change": smoothing_change(out["smooth_base"], out["smooth_samples"]),
        "extrema_of_mean": count_turns(mean, EXTREMA_TOL),
        "extrema_per_sample": [count_turns(y, EXTREMA_TOL) for y in out["smooth_samples"]],
        "nonfinite": int((~np.isfinite(out["smooth_samples"])).sum()),
        # relative to the curves' own range, with what the samples can resolve
        "roughness": smoothness(mean_roughness(out["smooth_samples"])),
    }
    variance = {
        str(sh): {
            str(int(h)): _num(out[f"variance_{i}"][j]) for j, h in enumerate(size["var_horizons"])
        }
        for i, sh in enumerate(SHIFTS)
    }
    nonfinite = {str(sh): [int(x) for x in out[f"nonfinite_{i}"]] for i, sh in enumerate(SHIFTS)}
    # the paper's unit: the mean over θ's coordinates (tr Cov / number of weights)
    per_param = {
        sh: {h: (None if v is None else v / n_params) for h, v in d.items()}
        for sh, d in variance.items()
    }
    # panel (c)'s growth as measured: which of e^{rate·T} and T^power fits ln variance
    fits = {
        sh: growth_fits(size["var_horizons"], out[f"variance_{i}"])
        for i, sh in enumerate(map(str, SHIFTS))
    }
    # and over the longer half of the unrolls (the last ⌈H/2⌉), where the growth settles
    half = len(size["var_horizons"]) // 2
    tail = {
        sh: dict(
            growth_fits(size["var_horizons"][half:], out[f"variance_{i}"][half:]),
            from_T=int(size["var_horizons"][half]),
        )
        for i, sh in enumerate(map(str, SHIFTS))
    }
    fmt = dict(size, unrolls=size["unrolls"], var_horizons=size["var_horizons"])
    meta = {
        "sizes": size,
        "variance_shifts": SHIFTS,
        "n_params": n_params,
        "smooth_std": SMOOTH_STD,
        "range": RANGE,
        "system": system.describe(),
        "seed": SEED,
        "theta_choice": report,
        "extrema_rule": f"local extrema standing out by more than {EXTREMA_TOL} in mean "
        "log-loss (hysteresis); extrema_raw counts every sign change of "
        "the difference, float32 wiggles on the flat side included",
        "slices": slices,
        "smoothing": smoothing,
        "variance": variance,
        "variance_per_param": per_param,
        "growth_fits": fits,
        "growth_fits_tail": tail,
        "growth_fit_rule": "least squares of ln variance against T (exponential) and "
        "against ln T (power law) over every saved unroll length "
        "(growth_fits) and over the longer half, from_T on "
        "(growth_fits_tail); better: the smaller residual RMS (ln "
        "units)",
        "variance_units": "variance: tr Cov over θ's n_params weights; variance_per_param "
        "and panel (c): the paper's unit, tr Cov / n_params",
        "roughness_rule": "chaosgrad.roughness: RMS about a degree-4 least-squares "
        "polynomial over the curve's own range; smoothing.roughness: "
        "of the mean of the samples, with its noise floor",
        "variance_nonfinite_samples": nonfinite,
        "variance_over": "θ + 0.01·N(0, I) perturbations; data batch and inner init fixed",
        "differs_from_paper": [s.format(**fmt) for s in DIFFERS],
    }
    return out, meta


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def draw(results: dict, meta: dict, path) -> None:
    """Three panels like the paper's Figure 3."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    s = results["shifts"]
    cmap = plt.get_cmap("viridis")
    unrolls = results["unrolls"]
    for i, t in enumerate(unrolls):
        y = results["slice_losses"][i]
        ext = meta.get("slices", {}).get(str(int(t)), {}).get("extrema")
        axes[0].plot(
            s,
            y,
            color=cmap(i / max(len(unrolls) - 1, 1)),
            lw=0.9,
            label=f"{int(t)} steps" + (f" ({ext} extrema)" if ext is not None else ""),
        )
    axes[0].set_title("(a) meta-loss along a random direction, randomness fixed")
    axes[0].set_xlabel("shift s (θ + s·d, ‖d‖ = number of weights)")
    axes[0].set_ylabel("mean log training loss")
    axes[0].legend(fontsize=7)
    sm = results["smooth_samples"]
    ss = results.get("smooth_shifts", np.linspace(-RANGE, RANGE, sm.shape[1]))
    sm_meta = meta.get("smoothing", {})
    std = sm_meta.get("std", meta["smooth_std"])
    for y in sm:
        axes[1].plot(ss, y, color="C0", alpha=0.3, lw=0.8)
    if "smooth_base" in results:
        r0 = sm_meta.get("base_roughness")
        axes[1].plot(
            ss,
            results["smooth_base"],
            color="C3",
            lw=1.2,
            label="θ unperturbed" + (f" (roughness {r0:.2g})" if r0 is not None else ""),
        )
    rm = sm_meta.get("roughness", {}).get("mean_roughness")
    axes[1].plot(
        ss,
        np.mean(sm, axis=0),
        "k-",
        lw=2,
        label=f"mean of {len(sm)} (θ + N(0, {std}²))"
        + (f" (roughness {rm:.2g})" if rm is not None else ""),
    )
    axes[1].set_title(
        f"(b) smoothed over θ, {meta['sizes']['smooth_T']} steps, data and init fixed", fontsize=10
    )
    axes[1].set_xlabel("shift s")
    axes[1].legend(fontsize=7)
    h = results["var_horizons"]
    per = float(meta["n_params"])  # the paper's unit: the mean over θ's coordinates
    for i, sh in enumerate(meta["variance_shifts"]):
        v = results[f"variance_{i}"] / per
        ok = np.isfinite(v) & (v > 0)
        f = meta.get("growth_fits", {}).get(str(sh))
        fit = (
            ""
            if not f or f.get("better") is None
            else (
                f": T^{f['power']:.2g} (ln RMS {f['power_rms']:.2g}) vs "
                f"e^{{{f['rate']:.2g}T}} ({f['exp_rms']:.2g})"
            )
        )
        axes[2].semilogy(h[ok], v[ok], "o-", ms=3, label=f"shift {sh}{fit}")
    axes[2].set_title("(c) meta-gradient variance over θ + N(0, 0.01²)", fontsize=10)
    axes[2].set_xlabel("unroll length (inner steps)")
    axes[2].set_ylabel(f"mean over the {meta['n_params']} weights of Var[∂L/∂θ_i]")
    axes[2].legend(fontsize=7)
    axes[2].grid(alpha=0.3, which="both")
    for ax in axes[:2]:
        ax.set_xticks([-RANGE, -RANGE / 2, 0.0, RANGE / 2, RANGE])
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"learned optimizer ({meta['n_params']} weights) training an MLP on digits "
        f"(one fixed batch, {meta['sizes'].get('dtype', '')})",
        fontsize=11,
    )
    fig.tight_layout()
    save(fig, path)
