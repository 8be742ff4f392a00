"""Print every number the README's gallery quotes, from the meta.json saved beside each gallery
PNG (chaosgrad/app/figures/gallery/<figure>.meta.json), formatted as the README writes it.

    .venv/bin/python benchmarks/gallery_numbers.py

tests/test_readme.py checks that each printed number is in that figure's README paragraph, and
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
GALLERY = ROOT / "chaosgrad" / "app" / "figures" / "gallery"


def fmt(x: float, sig: int = 2) -> str:
    """``x`` to ``sig`` significant digits as the README writes it: 0.038, 2.4e-16, 1e23."""
    x = float(x)
    # below 1e-3 the README writes 3e-4, not 0.0003
    s = f"{x:.{sig - 1}e}" if 0 < abs(x) < 1e-3 else f"{x:.{sig}g}"
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"
    return s


def rigid_body(m: dict) -> list[tuple[str, str]]:
    """Figure 2: (a) range and extrema at 8 and 16 steps, (b) extrema and wiggle per seed and
    of the mean, (c) the variance at the longest unroll per shift."""
    s = m["summary"]
    b8, b16 = s["b"]["8"], s["b"][str(m["sizes"]["smooth_unroll"])]
    out = [("points per slice", str(m["sizes"]["points"])),
           ("slice half-width", fmt(m["slice_radius"])),
           ("(b) seeds", str(m["sizes"]["seeds"])),
           ("(b) jagged unroll", str(m["sizes"]["smooth_unroll"])),
           ("(b) per-seed extrema min", str(b16["seed_extrema_min"])),
           ("(b) per-seed extrema max", str(b16["seed_extrema_max"])),
           ("(b) per-seed extrema median at 8 steps", fmt(b8["seed_extrema_median"], 3)),
           ("(b) per-seed wiggle (median)", fmt(b16["seed_wiggle_median"])),
           ("(b) wiggle of the mean", fmt(b16["mean_wiggle"]))]
    for t in ("8", "16"):
        a = s["a"][t]
        out += [(f"(a) T={t} range", fmt(a["range"])), (f"(a) T={t} extrema", str(a["extrema"]))]
    for sh, c in s["c"].items():
        if float(sh):
            out.append((f"(c) shift {sh}", fmt(abs(float(sh)))))
        out.append((f"(c) T={c['horizon']} variance at shift {sh}", fmt(c["variance"])))
    out.append(("(c) horizon", str(next(iter(s["c"].values()))["horizon"])))
    return out


def perturbation(m: dict) -> list[tuple[str, str]]:
    """Figure 7: MSE after the last step at ε_ref, modes growing, agreement with closed form."""
    n, steps = m["sizes"]["n"], m["sizes"]["steps"]
    out = [("n", str(n)), ("steps", str(steps)), ("ε", fmt(m["eps_ref"]))]
    errs = []
    for r, p in m["per_r"].items():
        out += [("r", r), (f"r={r} MSE k=n", fmt(p["mse_final_kn"]))]
        if p["modes_growing"]:
            out += [(f"r={r} modes growing", str(p["modes_growing"])),
                    (f"r={r} max |λ|", fmt(p["max_abs_eigenvalue"], 3))]
        errs.append(max(p["rel_error_once"], p["rel_error_every"]))
    out.append(("max relative error vs closed form", fmt(max(errs), 1)))
    return out


def linear(m: dict) -> list[tuple[str, str]]:
    """Appendix oracle: final gradient norms, FTCS exponent error and where it turns positive."""
    s = m["summary"]
    n = m["sizes"]["n"]
    bound = 1 / (2 * np.sin(n * np.pi / (2 * (n + 1))) ** 2)  # the Dirichlet von Neumann bound
    out = [("final horizon", str(s["final_horizon"])),
           ("max |λ1 measured − exact|", fmt(s["heat_lyapunov_max_abs_error"], 1)),
           ("last r with λ1 ≤ 0", fmt(s["heat_last_nonpositive_r"], 3)),
           ("first r with λ1 > 0", fmt(s["heat_first_positive_r"], 3)),
           ("n", str(n)), ("bound", fmt(bound, 3))]
    for rho in (min(m["radii"]), max(m["radii"])):
        out += [(f"radius {rho}", fmt(rho)),
                (f"final norm at radius {rho}", fmt(s["final_norm"][f"linear {rho}"]))]
    return out


def truncation(m: dict) -> list[tuple[str, str]]:
    """Figure 6: final reward per truncation length with its 95% interval over seeds."""
    z = m["sizes"]
    out = [("episode", str(z["episode"])), ("batch", str(z["batch"])),
           ("seeds", str(z["seeds"])), ("iterations", str(z["iterations"]))]
    first = next(iter(m["summary"].values()))
    full = m["summary"][str(max(int(t) for t in m["summary"]))]
    out += [("final iterations", str(first["final_iterations"])),
            ("reward at initialisation", fmt(first["initial_reward"])),
            ("largest gradient norm without truncation", fmt(full["grad_norm_max"]))]
    for t, v in m["summary"].items():
        out += [(f"t={t} final reward", fmt(v["final_reward"])),
                (f"t={t} low", fmt(v["low"])), (f"t={t} high", fmt(v["high"]))]
        if v["skipped"]:
            out.append((f"t={t} skipped", str(v["skipped"])))
    return out


NUMBERS = {"rigid_body": rigid_body, "perturbation": perturbation, "linear": linear,
           "truncation": truncation}


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
            found[name] = NUMBERS[name](json.loads(meta.read_text()))
        else:
            unchecked.append(name)
    return found, unchecked


# decimals and scientific numbers: the measured values (bare integers are mostly sizes and
# counts, checked one by one where printed above)
MEASURED = re.compile(r"(?<![\w.^{])(\d+(?:\.\d+)?e-?\d+|\d*\.\d+)(?![\d])")


def readme_paragraph(text: str, name: str) -> str:
    """The README gallery paragraph that ends with figure ``name``'s image."""
    img = f"![{name}](chaosgrad/app/figures/gallery/{name}.png)"
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
