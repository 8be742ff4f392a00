"""What would each figure cost at ``--scale paper`` on this CPU? Measure a small fraction and
project the rest, without running the whole thing.

    .venv/bin/python benchmarks/paper_scale_costs.py FIGURE [--parts-per-kind 2]
    .venv/bin/python benchmarks/paper_scale_costs.py --table   # the saved rows as markdown

A figure's experiment saves its work in parts (`Store.part`); parts of one kind (the key
without its digits: seed0, seed1, ... are one kind) cost the same. The first
``--parts-per-kind`` parts of each kind are computed and timed (the first one includes
compiling); every later part of that kind returns a copy of the last computed one, so the
figure's code runs through to the end at once. The projection is the measured wall time
plus, for each skipped part, the steady-state time of its kind (the last computed part's).
Work outside parts (setup, candidate selection) is in the measured wall time. One JSON row
per figure is appended to benchmarks/results/paper_scale_costs.jsonl.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "paper_scale_costs.jsonl"


class SamplingStore:
    """A `Store` stand-in: computes the first ``per_kind`` parts of each kind, times them,
    and answers later parts of the kind with a copy of the last computed one."""

    def __init__(self, per_kind: int, folder: Path | None = None):
        self.per_kind = per_kind
        # figures that checkpoint inside a part (meta-training) write under store.folder
        self.folder = Path(folder or tempfile.mkdtemp(prefix="paper_scale_costs-"))
        self.reused = 0
        self.computed: dict[str, list[float]] = defaultdict(list)
        self.skipped: dict[str, int] = defaultdict(int)
        self.last: dict[str, dict] = {}

    def part(self, key: str, fn) -> dict:
        """The arrays of part ``key``: computed (and timed) or copied (and counted)."""
        kind = re.sub(r"\d+", "#", key)
        if len(self.computed[kind]) >= self.per_kind:
            self.skipped[kind] += 1
            return {k: v.copy() for k, v in self.last[kind].items()}
        t0 = time.perf_counter()
        arrays = {k: np.asarray(v) for k, v in fn().items()}
        self.computed[kind].append(time.perf_counter() - t0)
        self.last[kind] = arrays
        # as it goes: a run stopped by a time limit still tells what its parts cost
        print(f"part {key}: {self.computed[kind][-1]:.1f} s", file=sys.stderr, flush=True)
        return arrays


def measure(name: str, per_kind: int) -> dict:
    """Run figure ``name`` at paper scale with a `SamplingStore`; the projected full cost."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from chaosgrad.app import figures

    mod = figures._module(name)
    store = SamplingStore(per_kind)
    t0 = time.perf_counter()
    results, meta = mod.run("paper", store, False)
    wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:  # drawing is part of the cost, and a check
        mod.draw(results, {"figure": name, "scale": "paper", **meta}, Path(tmp) / "f.png")
    extra = sum(n * store.computed[k][-1] for k, n in store.skipped.items())
    return {
        "figure": name,
        "per_kind": per_kind,
        "measured_s": round(wall, 1),
        "parts": {
            k: {"computed_s": [round(x, 2) for x in v], "skipped": store.skipped.get(k, 0)}
            for k, v in store.computed.items()
        },
        "projected_s": round(wall + extra, 1),
        "cpu": _cpu(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _cpu() -> str:
    import os

    return f"{os.cpu_count()} cores"


def table() -> str:
    """The saved rows (last per figure) as a markdown table."""
    rows = {}
    for line in RESULTS.read_text().splitlines():
        r = json.loads(line)
        rows[r["figure"]] = r
    out = [
        "| figure | measured (s) | parts computed / skipped | projected paper scale, "
        "this CPU | fits 60 min? |",
        "|---|---|---|---|---|",
    ]
    for r in rows.values():
        comp = sum(len(p["computed_s"]) for p in r["parts"].values())
        skip = sum(p["skipped"] for p in r["parts"].values())
        proj = r["projected_s"]
        out.append(
            f"| {r['figure']} | {r['measured_s']} | {comp} / {skip} | "
            f"{proj:.0f} s ({proj / 3600:.2f} h) | {'yes' if proj <= 3600 else 'no'} |"
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("figure", nargs="?")
    p.add_argument("--parts-per-kind", type=int, default=2)
    p.add_argument("--table", action="store_true")
    a = p.parse_args()
    if a.table:
        print(table())
        return 0
    row = measure(a.figure, a.parts_per_kind)
    print(json.dumps(row))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:  # one line per run: appending is the record, not a rewrite
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
