"""Regenerate the diagnose/compare examples the guides quote, with their 95% intervals.

Runs the command line exactly as docs/guides/diagnose.md and estimators.md show it and saves
each transcript (`.txt`) and its report (`report.json` / `compare.json`, and the figures) under
`benchmarks/results/readme/`. `tests/test_readme.py` checks that every line the pages
quote from a transcript is in the saved transcript. About 6 minutes on a 2-core CPU (the
learned-optimizer comparison takes 4 of them; its transcript records its wall time):

    .venv/bin/python benchmarks/readme_examples.py
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import time
from pathlib import Path

from chaosgrad.app.cli import main

OUT = Path(__file__).parent / "results" / "readme"
EXAMPLES = {
    "diagnose_henon": ["diagnose", "henon", "--x64"],
    "diagnose_rnn_stable": ["diagnose", "rnn", "--param", "n=16", "--param", "g=0.5", "--x64"],
    "diagnose_logistic_divergent": ["diagnose", "logistic", "--param", "r=4.5", "--x64"],
    "compare_logistic": ["compare", "logistic", "--param", "r=3.9", "--horizon", "30", "--x64"],
    # the learned-optimizer meta-gradient with compare's defaults (a 90 s sampling budget)
    "compare_lopt": ["compare", "lopt", "--horizon", "100"],
}


def run(name: str, argv: list[str]) -> str:
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        code = main([*argv, "--no-progress", "--out", str(folder)])
    if code != 0:
        raise SystemExit(f"{name}: exit {code}")
    text = (
        f"$ chaosgrad {' '.join(argv)}\n"
        + buf.getvalue()
        + f"# wall time {time.perf_counter() - t0:.0f} s, compiling included\n"
    )
    text = text.replace(str(folder), f"out/{name}")  # the transcript names a neutral folder
    for f in folder.glob("*.png"):  # keep the one overview figure, not every panel alone
        if f.name not in ("summary.png", "compare.png"):
            f.unlink()
    (OUT / f"{name}.txt").write_text(text)
    return text


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for n in sys.argv[1:] or list(EXAMPLES):
        print(run(n, EXAMPLES[n]))
