"""Print every number the gallery pages (docs/gallery/*.md) quote, from the meta.json saved
beside each gallery PNG (docs/gallery/<figure>.meta.json), formatted as the pages write it.

    .venv/bin/python benchmarks/gallery_numbers.py

tests/test_readme.py checks that each printed number is in that figure's paragraph, and
that every decimal or scientific number in the paragraph is one of them. Figures without a
saved meta.json are listed as not checkable.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "docs" / "gallery"
RESULTS = ROOT / "benchmarks" / "results"


def fmt(x: float, sig: int = 2) -> str:
    """``x`` to ``sig`` significant digits as the gallery writes it: 0.038, 2.4e-16, 1e23."""
    x = float(x)
    # below 1e-3 the gallery writes 3e-4, not 0.0003
    s = f"{x:.{sig - 1}e}" if 0 < abs(x) < 1e-3 else f"{x:.{sig}g}"
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"
    return s


def rigid_body(m: dict) -> list[tuple[str, str]]:
    """Figure 2: (a) range and extrema at 8 and 16 steps, (b) extrema per seed and, where
    saved, the roughness of one seed and of the mean relative to their range with the mean's
    noise floor (else the older wiggle), (c) the variance at the longest unroll per shift
    (per parameter, the paper's unit, where the parameter count is saved)."""
    s = m["summary"]
    b8, b16 = s["b"]["8"], s["b"][str(m["sizes"]["smooth_unroll"])]
    out = [
        ("points per slice", str(m["sizes"]["points"])),
        ("slice half-width", fmt(m["slice_radius"])),
        ("(b) seeds", str(m["sizes"]["seeds"])),
        ("(b) jagged unroll", str(m["sizes"]["smooth_unroll"])),
        ("(b) per-seed extrema min", str(b16["seed_extrema_min"])),
        ("(b) per-seed extrema max", str(b16["seed_extrema_max"])),
        ("(b) per-seed extrema median at 8 steps", fmt(b8["seed_extrema_median"], 3)),
    ]
    if "roughness" in b16:
        r = b16["roughness"]
        out += [
            ("(b) one seed's roughness (median)", fmt(r["curve_roughness_median"])),
            ("(b) the mean's roughness", fmt(r["mean_roughness"])),
            ("(b) the mean's noise floor", fmt(r["noise_floor"])),
        ]
        if not (r["resolved"] or r["smoother"]):
            # within its floor: the mean's range is then mostly the seeds' scatter too, so
            # the same numbers in the loss's own units (RMS about the degree-4 fit)
            span = b16["mean_range"]
            out += [
                ("(b) the mean's range", fmt(span)),
                ("(b) the mean's RMS about its fit", fmt(r["mean_roughness"] * span)),
                ("(b) the floor in the loss's units", fmt(r["noise_floor"] * span)),
                ("(b) per-seed wiggle (median)", fmt(b16["seed_wiggle_median"])),
                ("(b) wiggle of the mean", fmt(b16["mean_wiggle"])),
            ]
    else:
        out += [
            ("(b) per-seed wiggle (median)", fmt(b16["seed_wiggle_median"])),
            ("(b) wiggle of the mean", fmt(b16["mean_wiggle"])),
        ]
    for t in ("8", "16"):
        a = s["a"][t]
        out += [(f"(a) T={t} range", fmt(a["range"])), (f"(a) T={t} extrema", str(a["extrema"]))]
    per = "n_params" in m
    if per:
        out.append(("parameters", f"{m['n_params']:,}"))
    for sh, c in s["c"].items():
        if float(sh):
            out.append((f"(c) shift {sh}", fmt(abs(float(sh)))))
        if per:
            out += [
                (f"(c) T={c['horizon']} per parameter at shift {sh}", fmt(c["variance_per_param"])),
                (
                    f"(c) T={c['horizon_first']} per parameter at shift {sh}",
                    fmt(c["variance_first"] / m["n_params"]),
                ),
            ]
        else:
            out.append((f"(c) T={c['horizon']} variance at shift {sh}", fmt(c["variance"])))
    if m["scale"] == "quick":  # the paper-scale paragraph does not compare them
        last = [c["variance"] for c in s["c"].values()]
        out.append(
            (
                "(c) largest over smallest shift's variance at the last unroll",
                f"{float(f'{max(last) / min(last):.2g}'):g}",
            )
        )
    out.append(("(c) horizon", str(next(iter(s["c"].values()))["horizon"])))
    if per:
        out.append(("(c) first horizon", str(next(iter(s["c"].values()))["horizon_first"])))
    return out


def perturbation(m: dict) -> list[tuple[str, str]]:
    """Figure 7: sizes, the spectra's moduli, the MSE's log-log slope in ‖ε‖, the first-order
    law's largest relative error at the smallest ‖ε‖, its slope and where it is 10% off, and
    the MSE at ‖ε‖_ref after the last step per spectrum."""
    z, s = m["sizes"], m["summary"]
    out = [
        ("n", str(z["n"])),
        ("steps", str(z["steps"])),
        ("directions", str(z["draws"])),
        ("‖ε‖ ref", fmt(m["eps_ref"])),
        ("smallest ‖ε‖", fmt(min(v["smallest_eps_compared"] for v in s.values()), 1)),
        ("slope fitted below ‖ε‖", fmt(1e-4, 1)),
    ]
    for name in ("inside", "outside"):
        lo, hi = s[name]["moduli"]
        out += [(f"{name} moduli low", fmt(lo)), (f"{name} moduli high", fmt(hi))]
    out.append(
        (
            "MSE slope (every spectrum)",
            ", ".join(sorted({fmt(v["slope_small_eps"]) for v in s.values()})),
        )
    )
    out.append(
        (
            "first-order law: largest relative error at the smallest ‖ε‖",
            fmt(max(v["rel_error_smallest_eps"] for v in s.values())),
        )
    )
    off = [v["eps_first_order_off_by_10pct"] for v in s.values()]
    out += [
        ("10% off from ‖ε‖ (lowest)", fmt(min(off))),
        ("10% off from ‖ε‖ (highest)", fmt(max(off))),
    ]
    for name, v in s.items():
        out += [
            (f"{name}: relative error's slope", fmt(v["rel_error_slope"])),
            (f"{name}: MSE at ‖ε‖ ref, last step", fmt(v["mse_ref_final"])),
        ]
    return out


def state_perturbation(m: dict) -> list[tuple[str, str]]:
    """Appendix oracle (state perturbation): MSE after the last step at ε_ref, modes growing,
    agreement with closed form."""
    n, steps = m["sizes"]["n"], m["sizes"]["steps"]
    out = [("n", str(n)), ("steps", str(steps)), ("ε", fmt(m["eps_ref"]))]
    errs = []
    for r, p in m["per_r"].items():
        out += [("r", r), (f"r={r} MSE k=n", fmt(p["mse_final_kn"]))]
        if p["modes_growing"]:
            out += [
                (f"r={r} modes growing", str(p["modes_growing"])),
                (f"r={r} max |λ|", fmt(p["max_abs_eigenvalue"], 3)),
            ]
        errs.append(max(p["rel_error_once"], p["rel_error_every"]))
    out.append(("max relative error vs closed form", fmt(max(errs), 1)))
    return out


def linear(m: dict) -> list[tuple[str, str]]:
    """Appendix oracle: final gradient norms, FTCS exponent error and where it turns positive."""
    s = m["summary"]
    n = m["sizes"]["n"]
    bound = 1 / (2 * np.sin(n * np.pi / (2 * (n + 1))) ** 2)  # the Dirichlet von Neumann bound
    out = [
        ("final horizon", str(s["final_horizon"])),
        ("max |λ1 measured − exact|", fmt(s["heat_lyapunov_max_abs_error"], 1)),
        ("last r with λ1 ≤ 0", fmt(s["heat_last_nonpositive_r"], 3)),
        ("first r with λ1 > 0", fmt(s["heat_first_positive_r"], 3)),
        ("n", str(n)),
        ("bound", fmt(bound, 3)),
    ]
    for rho in (min(m["radii"]), max(m["radii"])):
        out += [
            (f"radius {rho}", fmt(rho)),
            (f"final norm at radius {rho}", fmt(s["final_norm"][f"linear {rho}"])),
        ]
    return out


def truncation(m: dict) -> list[tuple[str, str]]:
    """Figure 6: held-out reward of the final policy per truncation length (95% interval
    over seeds), the best t's paired difference to no truncation, and no truncation's
    gain over the initial policies."""
    z = m["sizes"]
    out = [
        ("episode", str(z["episode"])),
        ("batch", str(z["batch"])),
        ("seeds", str(z["seeds"])),
        ("iterations", str(z["iterations"])),
        ("evaluation episodes", str(z["eval_episodes"])),
    ]
    s = m["summary"]
    ts = sorted(int(t) for t in s)
    full = s[str(max(ts))]
    v = m["verdict"]
    out += [
        ("reward at initialisation", fmt(full["initial_reward"])),
        ("largest gradient norm without truncation", fmt(full["grad_norm_max"])),
        ("best t", str(v["best_t"])),
        ("t tied with the best", ", ".join(map(str, v["tied_with_best"]))),
        ("no truncation: final − initial", fmt(v["full_gain"])),
        ("no truncation: final − initial, low", fmt(v["full_gain_low"])),
        ("no truncation: final − initial, high", fmt(v["full_gain_high"])),
    ]
    for t in ts:
        r = s[str(t)]
        out += [
            (f"t={t} final reward", fmt(r["final_reward"])),
            (f"t={t} low", fmt(r["low"])),
            (f"t={t} high", fmt(r["high"])),
        ]
        if t == v["best_t"] and t != max(ts):
            out += [
                (f"t={t} minus no truncation", fmt(r["minus_full"])),
                (f"t={t} minus no truncation, low", fmt(r["minus_full_low"])),
                (f"t={t} minus no truncation, high", fmt(r["minus_full_high"])),
            ]
        if r["skipped"]:
            out.append((f"t={t} skipped", str(r["skipped"])))
    return out + truncation_other_seeds()


def truncation_other_seeds() -> list[tuple[str, str]]:
    """Figure 6 re-run with other training seeds and evaluation episodes
    (benchmarks/truncation_other_seeds.py): its best t, that t's paired difference to no
    truncation, and no truncation's gain. Nothing when the file is absent."""
    path = RESULTS / "truncation_other_seeds.json"
    if not path.exists():
        return []
    m = json.loads(path.read_text())
    v = m["verdict"]
    best = m["summary"][str(v["best_t"])]
    return [
        ("other seeds: best t", str(v["best_t"])),
        ("other seeds: t tied with the best", ", ".join(map(str, v["tied_with_best"]))),
        ("other seeds: best t minus no truncation", fmt(best["minus_full"])),
        ("other seeds: best t minus no truncation, low", fmt(best["minus_full_low"])),
        ("other seeds: best t minus no truncation, high", fmt(best["minus_full_high"])),
        ("other seeds: no truncation final − initial", fmt(v["full_gain"])),
        ("other seeds: no truncation final − initial, low", fmt(v["full_gain_low"])),
        ("other seeds: no truncation final − initial, high", fmt(v["full_gain_high"])),
    ]


def toy(m: dict) -> list[tuple[str, str]]:
    """Figure 1: σ, the fitted w² slope of backprop's variance, ES's range, the crossing."""
    s = m["summary"]
    lo, hi = s["crossing_between"]
    return [
        ("σ", fmt(m["sigma"])),
        ("backprop variance log-log slope", fmt(s["rep_slope"], 3)),
        ("ES variance min", fmt(s["es_min"], 1)),
        ("ES variance max", fmt(s["es_max"])),
        ("crossing after w", fmt(lo)),
        ("crossing by w", fmt(hi)),
    ]


def packing(m: dict) -> list[tuple[str, str]]:
    """Figure 4: N, the longest T, and the variance of dE/dD there at each diameter."""
    s = m["summary"]
    out = [
        ("N", str(m["sizes"]["n"])),
        ("longest T", str(s["horizon"])),
        ("seeds", str(m["sizes"]["seeds"])),
    ]
    for d, v in s["variance_at_longest"].items():
        out += [(f"D = {d}", fmt(float(d))), (f"variance at D = {d}", fmt(v, 1 if v >= 1e3 else 2))]
    r = s.get("roughness", {}).get(str(s["horizon"]))
    if r is not None:  # roughness relative to the curve's range (chaosgrad.roughness)
        out += [
            ("longest T: one seed's roughness (median)", fmt(r["curve_roughness_median"])),
            ("longest T: the mean's roughness", fmt(r["mean_roughness"])),
            ("longest T: the mean's noise floor", fmt(r["noise_floor"])),
        ]
    return out


def spectra(m: dict) -> list[tuple[str, str]]:
    """Figure 5: per init, the spectral radius of ∂s_t/∂s_0 at the last step and the gradient
    norm at the longest unroll; init2's scale."""
    s = m["summary"]
    i1, i2 = s["init1"], s["init2"]
    return [
        ("steps", str(s["steps"])),
        ("init2 scale", fmt(m["inits"]["init2"])),
        ("init1 product radius", fmt(i1["product_radius"], 1)),
        ("init1 gradient norm", fmt(i1["grad_norm"])),
        ("init2 product radius", f"{i2['product_radius']:.0f}"),
        ("init2 gradient norm", fmt(i2["grad_norm"], 1)),
    ]


def learning_rate(m: dict) -> list[tuple[str, str]]:
    """The learning-rate figure: λ1's bound below the jump and where it jumps, and the
    estimators' relative errors at the two compared rates (backprop and ES at the chaotic
    one, backprop at the stable one)."""
    s = m["summary"]
    lo, hi = (str(x) for x in m["compare_lrs"])
    iv = s["rel_error_interval"]
    out = [
        ("max λ1 below the jump", fmt(s["max_lyapunov_below"])),
        ("last η below the jump", fmt(s["last_lr_below"])),
        ("λ1 after the jump", fmt(s["lyapunov_first_above"])),
        ("first η after the jump", fmt(s["first_lr_above"])),
        (f"η = {lo}", fmt(float(lo))),
        (f"η = {hi}", f"{float(hi):.1f}"),
        (f"ES error at η = {lo}", fmt(iv[lo]["es"][0], 1)),
    ]
    out += _interval(f"backprop error at η = {hi}", iv[hi]["backprop"], (2, 2, 2))
    out += _interval(f"ES error at η = {hi}", iv[hi]["es"], (2, 2, 2))
    out += _interval(f"backprop error at η = {lo}", iv[lo]["backprop"], (2, 2, 2))
    # backprop's is the lowest value there, but its interval overlaps PES's: no ranking
    out += _interval(f"PES error at η = {lo}", iv[lo]["pes"], (2, 2, 2))
    return out


def _lopt_figure3(m: dict, variance_horizons: tuple[str, str]) -> list[tuple[str, str]]:
    """Figure 3 (either scale): the 128-step slice at 0 and its minimum, the longest slice's
    minimum, extrema per unroll, the smoothed mean's extrema, variance growth at two shifts."""
    sl, v = m["slices"], m["variance"]
    longest = str(max(int(t) for t in sl))
    paper = m["scale"] == "paper"
    out = [
        ("128-step slice at shift 0", fmt(sl["128"]["at_0"])),
        ("128-step slice minimum", fmt(sl["128"]["min"], 3 if paper else 2)),
        (f"{longest}-step slice minimum", fmt(sl[longest]["min"], 3)),
        ("extrema of the smoothed mean", str(m["smoothing"]["extrema_of_mean"])),
    ]
    if not paper:  # the paper-scale paragraph does not repeat them
        out += [("shift range", fmt(m["range"])), ("smoothing std", fmt(m["smooth_std"]))]
    out += [(f"extrema at {t} steps", str(sl[t]["extrema"])) for t in sl]
    lo, hi = variance_horizons
    n = m["n_params"]  # the paper's unit is the mean over the weights: tr Cov / n
    out.append(("weights", f"{n:,}"))
    for shift in ("0.0", "0.008"):
        if float(shift):
            out.append((f"variance shift {shift}", shift))
        sig = 1 if not paper and shift == "0.0" else 2
        for t in (lo, hi):
            out += [
                (f"variance at shift {shift}, T={t}", fmt(v[shift][t], sig)),
                (f"per weight at shift {shift}, T={t}", fmt(v[shift][t] / n, sig)),
            ]
    return out


def learned_optimizer(m: dict) -> list[tuple[str, str]]:
    """Figure 3 at quick scale (float32, digits): θ's roughness rule and its candidates, the
    slices' extrema and roughness, panel (b)'s move against its noise and the roughness of the
    slice, a sample and the mean, and panel (c) per weight (the paper's unit, as the image
    plots it) with the saved exponential and power-law fits at shifts 0 and 0.008."""
    if "growth_fits" not in m:  # a run before the roughness rule (kept readable)
        out = _lopt_figure3(m, ("10", "120"))
        threshold = float(re.search(r"more than ([\d.]+)", m["extrema_rule"]).group(1))
        return out + [("extrema threshold", f"{threshold:.0e}".replace("e-0", "e-"))]
    z, sl, n = m["sizes"], m["slices"], m["n_params"]
    ch, sm = m["theta_choice"], m["smoothing"]
    r, move = sm["roughness"], sm["change"]
    rough = sorted(c["roughness"] for c in ch["candidates"] if c["roughness"] is not None)
    chosen = next(c for c in ch["candidates"] if c["seed"] == ch["chosen_seed"])
    floor = re.search(r"range above ([\d.]+)", ch["rule"]).group(1)
    threshold = float(re.search(r"more than ([\d.]+)", m["extrema_rule"]).group(1))
    longest = str(max(int(t) for t in sl))
    out = [
        ("candidates", str(z["candidates"])),
        ("candidate shifts", str(z["candidate_points"])),
        ("candidate slice steps", str(z["candidate_T"])),
        ("least range ranked", floor),
        ("chosen slice's roughness", fmt(ch["chosen_roughness"])),
        ("next roughest candidate", fmt(rough[-2])),
        ("chosen slice's range", fmt(chosen["range"])),
        ("shifts per slice", str(z["points"])),
        ("shift range", fmt(m["range"])),
        ("extrema threshold", f"{threshold:.0e}".replace("e-0", "e-")),
        ("128-step slice at shift 0", fmt(sl["128"]["at_0"])),
        (f"{longest}-step slice minimum", fmt(sl[longest]["min"], 3)),
    ]
    out += [(f"extrema at {t} steps", str(sl[t]["extrema"])) for t in sl]
    out += [(f"roughness at {t} steps", fmt(sl[t]["roughness"])) for t in sl]
    out += [
        ("(b) steps", str(z["smooth_T"])),
        ("(b) samples", str(z["smooth_samples"])),
        ("(b) shifts", str(z["smooth_points"])),
        ("(b) std", fmt(sm["std"])),
        ("(b) unperturbed slice's roughness", fmt(sm["base_roughness"])),
        ("(b) one sample's roughness (median)", fmt(r["curve_roughness_median"])),
        ("(b) the mean's roughness", fmt(r["mean_roughness"])),
        ("(b) the mean's noise floor", fmt(r["noise_floor"])),
        ("(b) mean minus unperturbed, RMS over range", fmt(move["rms"])),
        ("(b) its noise", fmt(move["noise"])),
        ("(b) the move in noises", f"{move['rms'] / move['noise']:.1f}"),
        ("(b) half one sample's roughness", fmt(0.5 * r["curve_roughness_median"])),
    ]
    if not move["changed"]:
        # in expectation rms² = t² + noise² (t: the move itself; the noise falls like 1/√N):
        # the move is resolved (rms > k·noise) once N > N₀·(k² − 1)·noise₀² / t²
        k, n0 = move["resolved_factor"], move["noise"]
        t2 = move["rms"] ** 2 - n0**2
        if t2 > 0:
            need = move["samples"] * (k * k - 1) * n0**2 / t2
            out += [
                ("(b) the move without its noise", fmt(t2**0.5)),
                ("(b) samples to resolve the move", f"{int(float(f'{need:.2g}')):,}"),
            ]
    out += [
        ("(c) std", fmt(m["smooth_std"])),
        ("(c) samples", str(z["var_samples"])),
        ("weights", f"{n:,}"),
    ]
    hs = [str(h) for h in z["var_horizons"]]
    out += [
        ("(c) first unroll", hs[0]),
        ("(c) longest unroll", hs[-1]),
        ("(c) unrolls measured", str(len(hs))),
    ]
    for shift in ("0.0", "0.008"):
        if float(shift):
            out.append((f"variance shift {shift}", shift))
        v, f = m["variance_per_param"][shift], m["growth_fits"][shift]
        out += [(f"per weight at shift {shift}, T={t}", fmt(v[t])) for t in (hs[0], hs[-1])]
        out += [
            (f"shift {shift}: power of T", fmt(f["power"])),
            (f"shift {shift}: power-law residual RMS (ln)", fmt(f["power_rms"])),
            (f"shift {shift}: exponential rate per step", fmt(f["rate"])),
            (f"shift {shift}: exponential residual RMS (ln)", fmt(f["exp_rms"])),
        ]
    tail = m["growth_fits_tail"]
    out.append(("tail fits from unroll", str(tail["0.0"]["from_T"])))
    for shift in ("0.0", "0.002"):
        f = tail[shift]
        if float(shift):
            out.append((f"tail shift {shift}", shift))
        out += [
            (f"tail shift {shift}: exponential rate per step", fmt(f["rate"])),
            (f"tail shift {shift}: exponential residual RMS (ln)", fmt(f["exp_rms"])),
            (f"tail shift {shift}: power-law residual RMS (ln)", fmt(f["power_rms"])),
        ]
    return out


def growth_fits(variance: dict) -> dict:
    """`chaosgrad.gradients.growth_fits` of a saved {horizon: variance} (for a meta.json that
    predates the fits being saved beside it)."""
    from chaosgrad.gradients import growth_fits as fits

    return fits(
        [float(h) for h in variance], [np.nan if x is None else float(x) for x in variance.values()]
    )


def learned_optimizer_paper(m: dict) -> list[tuple[str, str]]:
    """Figure 3 at paper scale (GPU run): as at quick scale, plus its sizes, and at shifts 0
    and 0.008 the power-law and exponential fits of panel (c)'s growth."""
    z = m["sizes"]
    fits = []
    for sh in ("0.0", "0.008"):
        f = growth_fits(m["variance"][sh])
        fits += [
            (f"shift {sh}: power of T", fmt(f["power"])),
            (f"shift {sh}: power-law residual RMS (ln)", fmt(f["power_rms"], 1)),
            (f"shift {sh}: exponential residual RMS (ln)", fmt(f["exp_rms"])),
        ]
    return (
        _lopt_figure3(m, ("10", "120"))
        + fits
        + [
            ("points per slice", str(z["points"])),
            ("smoothing samples", str(z["smooth_samples"])),
            ("candidates", str(z["candidates"])),
            ("candidate points", str(z["candidate_points"])),
            ("seconds", str(round(m["seconds"]))),
            ("jax version (major.minor)", ".".join(m["versions"]["jax"].split(".")[:2])),
        ]
    )


def _interval(label: str, x: list[float], sig: tuple[int, int, int]) -> list[tuple[str, str]]:
    """Rows for ``value [low, high]``, each to its own significant digits as the gallery
    writes it."""
    return [
        (f"{label} {part}", fmt(v, d))
        for part, v, d in zip(("value", "low", "high"), x, sig, strict=True)
    ]


def lopt_estimators(m: dict) -> list[tuple[str, str]]:
    """Estimators of the meta-gradient: the shifts, the crossover cell and PES vs backprop at
    shift 0, T = 256 (relative RMS error at equal steps, 95% intervals)."""
    r = m["results"]
    cross = [(s, t) for s, t in m["crossover"].items() if t is not None]
    out = [(f"shift {s}", s) for s in m["results"] if float(s)]
    out.append(("sampling seconds per cell", str(round(m["sizes"]["seconds"]))))
    out.append(("ES/PES σ", fmt(m["sigma"])))
    for s, t in cross:
        e = r[s][str(t)]["estimators"]
        out.append((f"crossover at shift {s}", str(t)))
        out += _interval(f"combined at shift {s}, T={t}", e["combined"]["rel_error"], (1, 1, 2))
        out += _interval(f"backprop at shift {s}, T={t}", e["backprop"]["rel_error"], (2, 2, 2))
    e = r["0.0"]["256"]["estimators"]
    out += _interval("pes at shift 0, T=256", e["pes"]["rel_error"], (3, 3, 3))
    out += _interval("backprop at shift 0, T=256", e["backprop"]["rel_error"], (2, 2, 2))
    return out


def lopt_meta_training(m: dict) -> list[tuple[str, str]]:
    """Meta-training: held-out meta-loss at T per optimizer, the paired difference with Adam,
    and what happens at 10T."""
    tab, z = m["table"], m["sizes"]
    out = [
        ("horizon", str(z["horizon"])),
        ("budget", f"{z['budget']:,}"),
        ("outer lr", fmt(z["outer_lr"])),
        ("held-out seeds", str(z["heldout_seeds"])),
        ("lr grid points", str(z["lr_grid"][2])),
    ]
    best = min(tab, key=lambda n: tab[n]["T"]["meta_loss"])
    adam = next(n for n in tab if n.startswith("adam"))
    for name, row in tab.items():
        out.append((f"{name} at T", f"{row['T']['meta_loss']:.2f}"))
        if "untrained" in name:  # the starting point: its value at T only
            continue
        if row["10T"]["nonfinite_seeds"]:
            out += [
                (f"{name} at 10T: NaN seeds", str(row["10T"]["nonfinite_seeds"])),
                (f"{name} at 10T: first NaN step", str(row["10T"]["first_nonfinite_step"])),
            ]
        elif name.startswith("learned") or name == adam:  # tuned SGD/momentum: not quoted
            out.append((f"{name} at 10T final log-loss", f"{row['10T']['final_log_loss']:.1f}"))
    out += [
        (f"{best} standard error", fmt(tab[best]["T"]["meta_loss_se"], 1)),
        ("adam standard error", fmt(tab[adam]["T"]["meta_loss_se"], 1)),
    ]
    for est, v in m["vs_adam_at_T"].items():
        if v["beats_adam_at_T"]:
            se = tab[f"learned ({est})"]["T"]["meta_loss_se"]
            out += [
                (f"learned ({est}) standard error", fmt(se, 1)),
                (f"{est} - adam", fmt(v["mean_difference_vs_adam"])),
                (f"{est} - adam standard error", fmt(v["se"], 1)),
            ]
    return out


def lopt_self_training(m: dict) -> list[tuple[str, str]]:
    """Self-training: the sizes, Adam's tuned outer learning rate, stage 1's meta-loss, the
    held-out meta-loss of the fresh copies trained by Adam and by θ* with 95% intervals, the
    difference θ* − Adam with its interval and verdict, and the outer update's share of a
    step; skipped outer steps and non-finite values only where there are any."""
    z, s, d = m["sizes"], m["summary"], m["self_minus_adam"]
    out = [
        ("inner horizon", str(z["horizon"])),
        ("outer steps", f"{m['outer_steps']:,}"),
        ("runs", str(m["runs"])),
        ("held-out seeds", str(z["heldout_seeds"])),
        ("stage 1 outer steps", f"{z['stage1_steps']:,}"),
        ("Adam's tuned outer lr", fmt(m["adam_outer_lr"]["best"])),
        ("stage 1 initial eval meta-loss", f"{m['stage1']['initial_eval_meta_loss']:.2f}"),
        ("stage 1 final eval meta-loss", f"{m['stage1']['final_eval_meta_loss']:.2f}"),
        ("θ* held-out meta-loss", f"{m['stage1']['heldout_meta_loss']:.2f}"),
        ("untrained held-out meta-loss", f"{m['untrained_heldout_meta_loss'][0]:.2f}"),
    ]
    for k, label in (("adam", "Adam-trained"), ("self", "θ*-trained")):
        lo, hi = s[k]["interval"]
        out += [
            (f"{label} held-out meta-loss", f"{s[k]['heldout_meta_loss']:.2f}"),
            (f"{label} interval low", f"{lo:.2f}"),
            (f"{label} interval high", f"{hi:.2f}"),
            (f"{label} outer update share of a step", fmt(s[k]["outer_update_fraction"], 1)),
            (
                f"{label} RMS change of θ (median over runs)",
                fmt(np.median(s[k]["theta_rms_change"])),
            ),
        ]
        skipped = sum(s[k]["skipped_outer_steps"])
        if skipped:
            out.append((f"{label} skipped outer steps", str(skipped)))
        if s[k]["nonfinite_heldout_seeds"]:
            out.append((f"{label} non-finite held-out seeds", str(s[k]["nonfinite_heldout_seeds"])))
    lo, hi = d["interval"]
    out += [
        ("θ* − Adam", fmt(d["difference"])),
        ("θ* − Adam interval low", fmt(lo)),
        ("θ* − Adam interval high", fmt(hi)),
        (f"verdict ({d['verdict']})", d["verdict"]),
    ]
    return out


def lopt_generalization(m: dict) -> list[tuple[str, str]]:
    """Generalisation of learned optimizers on the task family: the sizes, the horizon's
    slice roughness (the rule behind "rugged"), and per learned optimizer (optimizer /
    estimator) the fraction of held-out tasks on which it beats family-tuned and per-task-tuned
    Adam at T and 10 T with its 95% interval, and its runs diverged at 10 T."""
    z = m["sizes"]
    out = [
        ("horizon T", str(m["horizon"])),
        ("meta-training runs", str(m["runs"])),
        ("held-out tasks", str(len(m["heldout"]["indices"]))),
        ("held-out seeds", str(m["heldout"]["seeds"])),
        ("budget", f"{z['budget']:,}"),
        ("learned optimizers' step scale", fmt(z["lopt_lr"])),
        ("family-tuned Adam lr", fmt(m["adam"]["family_lr"])),
        ("smooth level", fmt(next(iter(m["slice"].values()))["smooth_level"])),
    ]
    for opt, s in m["slice"].items():
        out.append((f"{opt} slice median roughness", fmt(s["median_roughness"])))
    for c in m.get("horizon_choice", {}).get("candidates", []):
        tag = f"candidate T={c['horizon']}, step scale {c['lopt_lr']:g}"
        out.append((f"{tag}: T", str(c["horizon"])))
        out.append((f"{tag}: step scale", fmt(c["lopt_lr"])))
        for opt in m["slice"]:
            out.append((f"{tag}: {opt} median roughness", fmt(c[opt]["median_roughness"])))
    for opt, s in m["slice"].items():
        out.append((f"{opt} non-finite slices at T", str(s["nonfinite_slices"])))
    ch = m["estimator_choice"]
    for name in (ch["estimator"], ch["comparison"]):
        e = ch["relative_error"][name]
        out += _interval(
            f"compare: {name}'s relative error", [e["value"], e["low"], e["high"]], (2, 2, 2)
        )
    for row in m["rows"]:
        t = m["table"][row]
        for b in ("family_adam", "task_adam"):  # the list's rows: in the meta.json
            for h in ("T", "10T"):
                v = t[f"vs_{b}_{h}"]
                out += _interval(
                    f"{row} beats {b} at {h}", [v["fraction"], *v["interval"]], (2, 2, 2)
                )
        d = t["diverged_10T"]
        out.append((f"{row} diverged at 10T (of {d['of']})", str(d["runs"])))
        skipped = m["skipped_outer_steps"][row]
        of = m["outer_steps"][row] * len(skipped)
        out.append((f"{row} skipped outer steps (of {of})", str(sum(skipped))))
        out.append((f"{row} outer steps per run", str(m["outer_steps"][row])))
    out.append(("seconds", f"{round(m['seconds']):,}"))
    return out


# Numbers a gallery paragraph quotes that are not results of ours: the paper's values it is
# compared with, and the software it ran on. Printed, labelled, so every number is accounted
# for; none of them is read from a meta.json.
QUOTED = {
    "packing": [("the paper's variance at D = 0.1", "1e90"), ("the paper's N", "128")],
    "packing_paper": [("the paper's variance at D = 0.1", "1e90")],
    "toy": [("the toy's amplitude, 0.1 sin(...)", "0.1"), ("the toy's offset, + 0.1", "0.1")],
    "learned_optimizer": [
        ("the paper's variance range, low", "1e-8"),
        ("the paper's variance range, high", "1e13"),
    ],
    "learned_optimizer_paper": [
        ("the paper's 128-step minimum", "2.1"),
        ("the paper's variance range, low", "1e-8"),
        ("the paper's variance range, high", "1e13"),
    ],
}


def toy_paper(m: dict) -> list[tuple[str, str]]:
    """Figure 1 at paper scale (run on this CPU): as at quick scale, plus its sizes and time."""
    z = m["sizes"]
    return toy(m) + [
        ("samples", f"{z['samples']:,}"),
        ("x points", str(z["xs"])),
        ("w points", str(z["ws"])),
        ("seconds", str(round(m["seconds"]))),
    ]


def learning_rate_paper(m: dict) -> list[tuple[str, str]]:
    """The learning-rate figure at paper scale (run on this CPU): as at quick scale, plus its
    sizes and time, and λ1 at the rates above the jump (it falls back there: training no
    longer makes progress) with the first and last of those rates."""
    z, s = m["sizes"], m["summary"]
    jump = float(f"{s['first_lr_above']:.3g}")  # summary["lyapunov"] keys rates to 3 digits
    above = {float(lr): v for lr, v in s["lyapunov"].items() if float(lr) > jump}
    return (
        learning_rate(m)
        + [(f"slice unroll {t}", str(t)) for t in z["horizons"]]
        + [
            ("slice points", str(z["points"])),
            ("learning rates", str(z["lrs"])),
            ("seeds", str(z["seeds"])),
            ("Lyapunov steps", f"{z['lyap_steps']:,}"),
            ("compare T", str(z["compare_T"])),
            ("samples", str(z["samples"])),
            ("seconds", str(round(m["seconds"]))),
            ("first η above the jump's rate", fmt(min(above))),
            ("largest η", fmt(max(above))),
            ("max λ1 above the jump's rate", fmt(max(above.values()))),
        ]
    )


def perturbation_paper(m: dict) -> list[tuple[str, str]]:
    """Figure 7 at paper scale (run on this CPU): as at quick scale, plus the time."""
    return perturbation(m) + [("seconds", str(round(m["seconds"])))]


def state_perturbation_paper(m: dict) -> list[tuple[str, str]]:
    """The state-perturbation oracle at paper scale (run on this CPU): as at quick scale,
    plus what differencing two runs gave instead (its largest relative error and the
    unperturbed run's RMS at the end, at the r with growing modes) and the time."""
    grow = [p for p in m["per_r"].values() if p["modes_growing"]]
    return state_perturbation(m) + [
        (
            "two runs differenced: max relative error",
            fmt(max(p["two_run_rel_error_once"] for p in m["per_r"].values()), 1),
        ),
        ("unperturbed RMS after the last step", fmt(max(p["base_rms_final"] for p in grow), 1)),
        ("seconds", str(round(m["seconds"]))),
    ]


def linear_paper(m: dict) -> list[tuple[str, str]]:
    """The appendix oracle at paper scale (run on this CPU): as at quick scale, plus sizes."""
    z = m["sizes"]
    return linear(m) + [
        ("seeds", str(z["seeds"])),
        ("values of r", str(z["rs"])),
        ("Lyapunov steps", f"{z['lyap_steps']:,}"),
        ("seconds", str(round(m["seconds"]))),
    ]


def spectra_paper(m: dict) -> list[tuple[str, str]]:
    """Figure 5 at paper scale (run on this CPU): as at quick scale (init2's radius to two
    digits: it is no longer near 10 there), plus its sizes and time."""
    z = m["sizes"]
    i2 = m["summary"]["init2"]
    rows = [
        r if r[0] != "init2 product radius" else (r[0], fmt(i2["product_radius"]))
        for r in spectra(m)
    ]
    return rows + [
        ("policy layers", str(z["layers"])),
        ("seeds", str(z["seeds"])),
        ("seconds", str(round(m["seconds"]))),
    ]


def rigid_body_paper(m: dict) -> list[tuple[str, str]]:
    """Figure 2 at paper scale (run on this CPU, the paper's policy): as at quick scale, plus
    the (c) seeds, the policy's layers and the time."""
    z = m["sizes"]
    return rigid_body(m) + [
        ("(c) seeds", str(z["var_seeds"])),
        ("policy layers", str(z["layers"])),
        ("seconds", str(round(m["seconds"]))),
    ]


def packing_paper(m: dict) -> list[tuple[str, str]]:
    """Figure 4 at paper scale (run on this CPU): as at quick scale, plus sizes, time and the
    extrema of the mean and of one seed (median) at the longest T."""
    s = m["summary"]
    t = str(s["horizon"])
    return packing(m) + [
        ("diameters", str(m["sizes"]["points"])),
        ("seconds", str(round(m["seconds"]))),
        ("extrema of the mean at the longest T", str(s["mean_extrema"][t])),
        ("extrema of one seed (median)", fmt(s["seed_extrema_median"][t])),
    ]


NUMBERS = {
    "toy": toy,
    "packing": packing,
    "spectra": spectra,
    "rigid_body": rigid_body,
    "learning_rate": learning_rate,
    "toy_paper": toy_paper,
    "linear_paper": linear_paper,
    "spectra_paper": spectra_paper,
    "rigid_body_paper": rigid_body_paper,
    "packing_paper": packing_paper,
    "perturbation_paper": perturbation_paper,
    "learning_rate_paper": learning_rate_paper,
    "perturbation": perturbation,
    "state_perturbation": state_perturbation,
    "state_perturbation_paper": state_perturbation_paper,
    "linear": linear,
    "truncation": truncation,
    "learned_optimizer": learned_optimizer,
    "learned_optimizer_paper": learned_optimizer_paper,
    "lopt_estimators": lopt_estimators,
    "lopt_meta_training": lopt_meta_training,
    "lopt_self_training": lopt_self_training,
    "lopt_generalization": lopt_generalization,
}


# Each "smooth" or "smoother" (whole words, any case) in a figure's gallery paragraph, with the
# saved verdict behind it (`chaosgrad.roughness.smoothness`, as keys into its meta.json):
# tests/test_readme.py checks that the gallery's words and these claims match one to one, and
# that every verdict named is true. Words like "smoothed" or "smoothing" name an operation
# and are not claims.
SMOOTH_WORDS = re.compile(r"\bsmooth(?:er)?\b", re.IGNORECASE)
SMOOTH_CLAIMS: dict[str, list[tuple[str, list[str]]]] = {
    # Figure 4: the mean of the seeds' energy curves at the longest T, under half one seed's
    "packing": [("smoother", ["summary", "roughness", "256", "smoother"])],
}


def saved_verdict(meta: dict, path: list[str]):
    """The value at ``path`` (keys) in a figure's meta.json."""
    for k in path:
        meta = meta[k]
    return meta


# The gallery introduction's times, figure by figure (quick scale), as it writes them.
INTRO_TIMES = (
    ("Figure 1", "toy"),
    ("Figure 2", "rigid_body"),
    ("Figure 4", "packing"),
    ("Figure 5", "spectra"),
    ("Figure 6", "truncation"),
    ("Figure 7", "perturbation"),
    ("its state-perturbation oracle", "state_perturbation"),
    ("the appendix oracle", "linear"),
    ("the learning-rate figure", "learning_rate"),
)


def _seconds(x: float) -> str:
    return str(round(x)) if x >= 10 else fmt(x)


def intro_times() -> str:
    """The introduction's sentence of times, from each quick figure's meta.json: its
    ``compute_seconds`` (this run plus the parts it reused), or, for a figure saved before
    parts kept their times and rebuilt from reused parts, its ``seconds`` and how many parts
    it reused (their time unknown)."""
    done, rebuilt = [], []
    for label, name in INTRO_TIMES:
        m = json.loads((GALLERY / f"{name}.meta.json").read_text())
        if m.get("compute_seconds") is not None or not m.get("parts_reused"):
            done.append(f"{label}: {_seconds(m.get('compute_seconds') or m['seconds'])} s")
        else:
            rebuilt.append(
                f"{label} ({_seconds(m['seconds'])} s, {m['parts_reused']} parts reused)"
            )
    text = "Figure by figure, from each meta.json: " + ", ".join(done) + "."
    if rebuilt:
        text += (
            " Rebuilt from saved parts whose own time was not recorded: " + ", ".join(rebuilt) + "."
        )
    return text


def gallery_pngs() -> list[str]:
    """Every figure with a PNG in the gallery."""
    return sorted(p.stem for p in GALLERY.glob("*.png"))


def numbers() -> tuple[dict, list[str]]:
    """{figure: [(label, formatted number)]} for each figure with a saved meta.json and a
    printer here; and the gallery figures that cannot be checked yet."""
    found, unchecked = {}, []
    for name in gallery_pngs():
        meta = GALLERY / f"{name}.meta.json"
        if meta.exists() and name in NUMBERS:
            found[name] = NUMBERS[name](json.loads(meta.read_text())) + QUOTED.get(name, [])
        else:
            unchecked.append(name)
    return found, unchecked


# decimals and scientific numbers: the measured values (bare integers are mostly sizes and
# counts, checked one by one where printed above)
MEASURED = re.compile(r"(?<![\w.^{])(\d+(?:\.\d+)?e-?\d+|\d*\.\d+)(?![\d])")


def gallery_pages() -> list[Path]:
    """The gallery's pages: its introduction (index.md) and one page per figure."""
    return sorted(GALLERY.glob("*.md"))


def gallery_text() -> str:
    """Every gallery page, one after the other (a paragraph never spans two)."""
    return "\n\n".join(p.read_text() for p in gallery_pages())


def gallery_paragraph(text: str, name: str) -> str:
    """The gallery paragraph that ends with figure ``name``'s image (``text``: the gallery's
    pages, `gallery_text`)."""
    img = f"![{name}]({name}.png)"
    end = text.index(img)
    start = text.rfind("\n\n", 0, end)
    return text[start:end]


def main() -> int:
    found, unchecked = numbers()
    for name, rows in found.items():
        for label, value in rows:
            print(f"{name:<13} {label:<40} {value}")
    if unchecked:
        print("no saved meta.json (not checked): " + ", ".join(unchecked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
