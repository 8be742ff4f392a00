"""The README quotes saved transcripts, not memory: every line of a quoted block must be in
the transcript file it names (regenerate them with benchmarks/readme_examples.py)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUOTE = re.compile(r"<!-- quoted from (\S+) -->\n```\n(.*?)```", re.S)


def test_every_quoted_line_is_in_its_saved_transcript():
    blocks = QUOTE.findall((ROOT / "README.md").read_text())
    assert len(blocks) >= 4
    for path, body in blocks:
        saved = (ROOT / path).read_text().splitlines()
        for line in body.splitlines():
            assert line in saved, f"README line not in {path}: {line!r}"


def test_transcripts_come_with_their_reports():
    import json

    folder = ROOT / "benchmarks" / "results" / "readme"
    henon = json.loads((folder / "diagnose_henon" / "report.json").read_text())
    assert henon["verdict"] == "chaotic"
    iv = henon["lyapunov_interval"]
    assert iv["low"] < henon["lyapunov"]["exponents"][0] < iv["high"]
    assert json.loads((folder / "diagnose_logistic_divergent" / "report.json").read_text()
                      )["verdict"] == "diverges"
    cmp = json.loads((folder / "compare_logistic" / "compare.json").read_text())
    assert set(cmp["tied"]) == {"es", "tbptt"}
