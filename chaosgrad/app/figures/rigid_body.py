"""Figure 2 of the paper: Brax Ant under an MLP policy. Loss slices along a random direction in
θ turn jagged as the unroll grows; averaging over action noise (reset state fixed) smooths them;
the variance of the gradient grows with the unroll, at a rate that depends on θ.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from chaosgrad import systems
from chaosgrad.gradients import count_extrema, gradient_growth, loss_slice, random_direction
from chaosgrad.roughness import mean_roughness, roughness, smoothness
from chaosgrad.system import split_run_key

SIZES: dict[str, dict[str, Any]] = {
    # quick: 201 points cost ~1 s per seed after one ~30 s compilation (2 cores). The noise
    # floor the seeds' scatter leaves in the mean falls like 1/√seeds: with 128 seeds it was
    # 0.19 of the mean's range, above half one seed's roughness (0.076), so the mean's own
    # roughness was not resolved; 1,024 seeds bring the floor to about 0.07
    "quick": {
        "env": "ant",
        "unrolls": [1, 2, 4, 8, 16],
        "points": 201,
        "seeds": 1024,
        "smooth_unroll": 16,
        "var_horizons": [2, 4, 8, 16, 32],
        "var_seeds": 32,
        "layers": 2,
    },
    # paper: the paper's policy (4 hidden layers of 32 swish units, tanh-Normal actions;
    # action_noise 1 samples the Normal with its own scale, then tanh)
    "paper": {
        "env": "ant",
        "unrolls": [1, 2, 4, 8, 16],
        "points": 201,
        "seeds": 256,
        "smooth_unroll": 16,
        "var_horizons": [2, 4, 8, 16, 32, 64],
        "var_seeds": 64,
        "layers": 4,
        "policy": "paper",
        "action_noise": 1.0,
    },
}
RANGE = 0.004
SEEDS_DRAWN = 48  # panel (b) draws the first 48 seeds' curves; the mean is over all
VAR_SHIFTS = (-0.002, 0.0, 0.002)
NOISE = 0.1
# (b) also records the paper's 8 steps: with the reset fixed our per-seed 8-step slices are
# nearly smooth (0-18 interior extrema over 201 points), so the jagged length we draw is 16
PAPER_SMOOTH_UNROLL = 8


def make_system(size):
    """Ant (generalized backend) under the size's policy: at quick scale a tanh MLP with
    Gaussian action noise N(0, NOISE²); at paper scale the paper's tanh-Normal policy."""
    return systems.make(
        "brax",
        env=size["env"],
        backend="generalized",
        policy=size.get("policy", "mlp"),
        hidden=32,
        layers=size["layers"],
        action_noise=noise_of(size),
        seed=0,
    )


def noise_of(size) -> float:
    """The action noise of a size: N(0, NOISE²) added to the MLP's action, or for the
    paper's policy the multiple (1) of its own tanh-Normal scale."""
    return size.get("action_noise", NOISE)


def policy_text(size) -> str:
    """What the figure's policy is, for its metadata and title."""
    if size.get("policy") == "paper":
        return (
            "the paper's: 4 hidden layers of 32 swish units, actions tanh of a Normal "
            "sample (its noise fixed by one key in a, drawn per seed in b and c)"
        )
    return (
        f"tanh MLP, {size['layers']} hidden layers of 32 (paper: 4 of 32 swish, "
        "tanh-Normal actions)"
    )


def fixed_reset(system, key):
    """``system`` with its reset state fixed to the one ``key``'s run starts from, so that a
    run's key drives the action noise alone (the paper's randomness in Figure 2b)."""
    k_init, _ = split_run_key(key)
    return system.replace(init=lambda _key, theta: system.init(k_init, theta))


def wiggle(y) -> float:
    """RMS of a sampled curve about its least-squares quadratic: 0 for a smooth curve over a
    short slice, the size of the jumps for a jagged one (NaN if any value is non-finite).
    Unlike a count of extrema or the total variation, it shrinks when jagged curves are
    averaged (their jumps sit at different shifts), like 1/√(number of curves)."""
    y = np.asarray(y, np.float64)
    if not np.all(np.isfinite(y)):
        return float("nan")
    x = np.linspace(-1.0, 1.0, y.size)
    return float(np.sqrt(np.mean((y - np.polyval(np.polyfit(x, y, 2), x)) ** 2)))


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """(a) slices with randomness fixed, (b) slices over action-noise seeds with the reset
    fixed, (c) gradient variance vs T at three shifts."""
    from chaosgrad.progress import progress_bar

    size = SIZES[scale]
    system = make_system(size)
    theta = system.theta
    n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(theta)))
    key = jax.random.PRNGKey(0)
    direction = random_direction(theta, jax.random.fold_in(key, 1))
    smooth = [PAPER_SMOOTH_UNROLL, size["smooth_unroll"]]
    noise_only = fixed_reset(system, key)  # the reset of panel (a)'s run, for every seed
    out = {}
    with progress_bar(
        1 + size["seeds"] + len(VAR_SHIFTS), "figure rigid_body", progress, min_total=1
    ) as bar:
        out["slice_losses"] = store.part(
            "slices",
            lambda: {
                "losses": loss_slice(
                    system,
                    theta,
                    horizons=size["unrolls"],
                    key=key,
                    direction=direction,
                    radius=RANGE,
                    points=size["points"],
                ).losses
            },
        )["losses"]
        bar.update(1)
        per_seed = []
        for i in range(size["seeds"]):
            per_seed.append(
                store.part(
                    f"seed{i}",
                    lambda i=i: {
                        "losses": loss_slice(
                            noise_only,
                            theta,
                            horizons=smooth,
                            key=jax.random.fold_in(key, 10 + i),
                            direction=direction,
                            radius=RANGE,
                            points=size["points"],
                        ).losses
                    },
                )["losses"]
            )
            bar.update(1)
        out["seed_losses"] = np.stack(per_seed)  # (seeds, len(smooth), points)
        for j, s in enumerate(VAR_SHIFTS):
            th = jax.tree_util.tree_map(lambda t, d, s=s: t + s * d, theta, direction)
            # (c) over the randomness of (b): the reset of (a)'s run, action noise per seed
            p = store.part(f"variance{j}", lambda th=th: _variance(noise_only, th, size, key))
            out[f"variance_{j}"] = p["variance"]
            out[f"nonfinite_{j}"] = p["nonfinite"]
            bar.update(1)
    out["shifts"] = np.linspace(-RANGE, RANGE, size["points"])
    out["unrolls"] = np.asarray(size["unrolls"])
    out["smooth_unrolls"] = np.asarray(smooth)
    out["var_horizons"] = np.asarray(size["var_horizons"])
    noise = noise_of(size)
    noise_b = (
        f"the action noise N(0, {noise}²)"
        if size.get("policy") != "paper"
        else "the policy's tanh-Normal sample"
    )
    meta = {
        "sizes": size,
        "var_shifts": VAR_SHIFTS,
        "action_noise": noise,
        "slice_radius": RANGE,
        "system": system.describe(),
        "seed": 0,
        "policy": policy_text(size),
        "randomness": {
            "a": "one key (PRNGKey(0)): reset state and action noise fixed along the slice",
            "b": "reset state fixed (the one of panel a) for every seed; seed i draws "
            f"{noise_b} from fold_in(PRNGKey(0), 10 + i)",
            "c": f"as in b: reset state fixed (the one of panel a), {size['var_seeds']} "
            f"seeds drawing {noise_b} from split(fold_in(PRNGKey(0), 100), "
            f"{size['var_seeds']})",
        },
        "n_params": n_params,
        "variance_units": "(c) plots the paper's unit, the mean over θ's n_params "
        "coordinates of Var[∂L/∂θ_i] (tr Cov / n_params); summary c "
        "keeps tr Cov as 'variance' beside it",
        "roughness_rule": ROUGHNESS_RULE,
        "summary": summary(out, size, n_params),
    }
    return out, meta


ROUGHNESS_RULE = (
    "chaosgrad.roughness: the RMS about a degree-4 least-squares polynomial over the curve's "
    "own range, per seed and for the mean over seeds, with the noise floor the seeds' scatter "
    "leaves in that mean; 'smooth' = at most 0.02, 'smoother' = at most half the median "
    "seed's, 'resolved' = above 2 floors"
)


def summary(out: dict, size: dict, n_params: int | None = None) -> dict:
    """The numbers the README quotes, computed from the results alone (the variance also per
    parameter, the paper's unit, when ``n_params`` is given)."""
    sl = out["slice_losses"]
    seeds = out["seed_losses"]
    mean = np.nanmean(seeds, axis=0)
    res: dict[str, Any] = {
        "a": {
            str(t): {
                "range": float(np.ptp(sl[i])),
                "extrema": count_extrema(sl[i]),
                "wiggle": wiggle(sl[i]),
                "roughness": roughness(sl[i]),
                "nonfinite": int(np.sum(~np.isfinite(sl[i]))),
            }
            for i, t in enumerate(size["unrolls"])
        },
        "b": {},
        "c": {},
    }
    for j, t in enumerate(out["smooth_unrolls"]):
        ext = [count_extrema(y) for y in seeds[:, j]]
        wig = [wiggle(y) for y in seeds[:, j]]
        res["b"][str(int(t))] = {
            "seed_extrema_min": int(np.min(ext)),
            "seed_extrema_median": float(np.median(ext)),
            "seed_extrema_max": int(np.max(ext)),
            "seed_wiggle_median": float(np.nanmedian(wig)),
            "mean_extrema": count_extrema(mean[j]),
            "mean_wiggle": wiggle(mean[j]),
            "mean_range": float(np.ptp(mean[j])),
            "roughness": smoothness(mean_roughness(seeds[:, j])),
            "nonfinite": int(np.sum(~np.isfinite(seeds[:, j]))),
        }
    h = out["var_horizons"]
    for j, sh in enumerate(VAR_SHIFTS):
        v = out[f"variance_{j}"]
        res["c"][str(sh)] = {
            "horizon": int(h[-1]),
            "variance": float(v[-1]),
            "variance_first": float(v[0]),
            "horizon_first": int(h[0]),
            "nonfinite_fraction_max": float(np.max(out[f"nonfinite_{j}"])),
        }
        if n_params:
            res["c"][str(sh)]["variance_per_param"] = float(v[-1]) / n_params
    return res


def _variance(system, theta, size, key):
    g = gradient_growth(
        system,
        theta,
        horizons=size["var_horizons"],
        seeds=size["var_seeds"],
        key=jax.random.fold_in(key, 100),
        progress=False,
    )
    return {"variance": g.variance, "nonfinite": g.nonfinite_fraction}


def draw(results: dict, meta: dict, path) -> None:
    """(a) one panel per unroll length on its own scale; (b) per-seed slices and their mean at
    the jagged length, reset fixed; (c) gradient variance vs unroll length."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import log_scale, save

    un = results["unrolls"]
    fig = plt.figure(figsize=(18, 9.5))
    grid = fig.add_gridspec(2, len(un))
    s = results["shifts"]
    summ = meta["summary"]
    for i, t in enumerate(un):
        ax = fig.add_subplot(grid[0, i])
        a = summ["a"][str(int(t))]
        y = results["slice_losses"][i]
        at0 = float(y[len(y) // 2])
        # each panel minus its value at shift 0 (stated in the title): the tick labels then
        # show the change along the slice, not six equal leading digits
        ax.plot(s, y - at0, color="C0", lw=1)
        for sh in meta["var_shifts"]:
            ax.axvline(sh, color="0.5", ls="--", lw=0.7)
        ax.set_title(
            f"(a) T = {int(t)}: L(0) = {at0:.4g}\nrange {a['range']:.2g}, {a['extrema']} extrema",
            fontsize=9,
        )
        ax.set_xlabel("shift along a unit direction in θ", fontsize=8)
        if i == 0:
            ax.set_ylabel("mean −reward − L(0), randomness fixed\n(each panel its own y scale)")
        ax.set_xticks([-RANGE, 0.0, RANGE])
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    half = len(un) // 2 + (len(un) % 2)
    b = fig.add_subplot(grid[1, :half])
    c = fig.add_subplot(grid[1, half:])
    j = len(results["smooth_unrolls"]) - 1  # the jagged length (the last one saved)
    t = int(results["smooth_unrolls"][j])
    seeds = results["seed_losses"][:, j]
    for y in seeds[:SEEDS_DRAWN]:
        b.plot(s, y, alpha=0.35, lw=0.7)
    b.plot(s, np.nanmean(seeds, axis=0), "k-", lw=2.2, label=f"mean over {len(seeds)} seeds")
    bs = summ["b"][str(t)]
    for sh in meta["var_shifts"]:
        b.axvline(sh, color="0.5", ls="--", lw=0.7)
    r = bs.get("roughness")
    b.set_title(
        f"(b) T = {t}, reset state fixed, {len(seeds)} action-noise seeds"
        + (f" ({SEEDS_DRAWN} drawn)" if len(seeds) > SEEDS_DRAWN else "")
        + (
            ""
            if r is None
            else f". Roughness / own range: one seed {r['curve_roughness_median']:.2g} (median), "
            f"the mean {r['mean_roughness']:.2g} (noise floor {r['noise_floor']:.2g})"
        )
        + "; dashed: the shifts of (c)",
        fontsize=9,
    )
    b.set_xlabel("shift along the same direction")
    b.set_ylabel(f"mean −reward over {t} steps")
    b.set_xticks([-RANGE, -RANGE / 2, 0.0, RANGE / 2, RANGE])
    b.legend(fontsize=8)
    h = results["var_horizons"]
    # the paper's unit: the mean over θ's coordinates of the variance (tr Cov / n)
    per = float(meta.get("n_params") or 1)
    for k, sh in enumerate(meta["var_shifts"]):
        v = results[f"variance_{k}"] / per
        ok = np.isfinite(v) & (v > 0)
        c.plot(h[ok], v[ok], "o-", ms=3, label=f"shift {sh}")
    log_scale(
        c,
        np.concatenate([results[f"variance_{k}"] / per for k in range(len(meta["var_shifts"]))]),
        "y",
        "variance",
    )
    fixed = meta["randomness"]["c"].startswith("as in b")
    c.set_title(
        f"(c) gradient variance across {meta['sizes']['var_seeds']} seeds "
        + ("(action noise, reset fixed as in b)" if fixed else "(reset and action noise)"),
        fontsize=9,
    )
    c.set_xlabel("unroll length (steps)")
    c.set_ylabel(
        "mean over θ's coordinates of Var[∂L/∂θ_i]" if "n_params" in meta else "tr Cov[∂L/∂θ]"
    )
    c.legend(fontsize=8)
    for ax in (b, c):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"Brax {meta['sizes']['env']} (generalized backend), {meta['policy']}, "
        f"{meta['system'].get('precision')}",
        fontsize=11,
    )
    fig.tight_layout()
    save(fig, path)
