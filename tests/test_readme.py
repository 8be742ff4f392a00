"""The README and the documentation pages quote saved results, not memory: every line of a
quoted block must be in the transcript file it names (regenerate them with
benchmarks/readme_examples.py); the gallery's numbers are its meta.json files'; the benchmark
table is bench.txt; and every command of the README runs."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUOTE = re.compile(r"<!-- quoted from (\S+) -->\n```\n(.*?)```", re.S)
DOCS = ROOT / "docs"
# the pages that quote saved results, each checked below against the files it quotes
BENCHMARKS_PAGE = DOCS / "results" / "benchmarks.md"


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_every_quoted_line_is_in_its_saved_transcript():
    blocks = [(page, *b) for page in _pages() for b in QUOTE.findall(page.read_text())]
    assert len(blocks) >= 7
    for page, path, body in blocks:
        saved = (ROOT / path).read_text().splitlines()
        for line in body.splitlines():
            assert line in saved, f"{page.name}: line not in {path}: {line!r}"
    # every saved transcript is quoted somewhere (none left behind when prose moves)
    quoted = {path for _, path, _ in blocks}
    for txt in (ROOT / "benchmarks" / "results" / "readme").glob("*.txt"):
        assert str(txt.relative_to(ROOT)) in quoted, f"{txt.name} is quoted by no page"


def test_transcripts_come_with_their_reports():
    import json

    folder = ROOT / "benchmarks" / "results" / "readme"
    henon = json.loads((folder / "diagnose_henon" / "report.json").read_text())
    assert henon["verdict"] == "chaotic"
    iv = henon["lyapunov_interval"]
    assert iv["low"] < henon["lyapunov"]["exponents"][0] < iv["high"]
    assert (
        json.loads((folder / "diagnose_logistic_divergent" / "report.json").read_text())["verdict"]
        == "diverges"
    )
    # the README's sentences about the logistic map: "the reference is ES ... cross-checked
    # by backprop at θ ± σε, which agrees ... ES and truncated backprop tie ... PES is
    # separated just behind ES ... backprop is far behind; truncated backprop's bias is
    # resolved from zero, the others' are upper bounds"
    cmp = json.loads((folder / "compare_logistic" / "compare.json").read_text())
    assert cmp["target"] == "smoothed" and cmp["reference"].startswith("es:")
    assert cmp["reference_check"]["agree"] and not cmp["null_check"]["resolved"]
    assert set(cmp["tied"]) == {"es", "tbptt"} and cmp["recommended"] is None
    by = {e["name"]: e for e in cmp["estimators"]}
    assert by["pes"]["relative_error"]["low"] > by["es"]["relative_error"]["high"]
    assert by["backprop"]["relative_error"]["low"] > max(
        by[n]["relative_error"]["high"] for n in ("es", "tbptt", "pes")
    )
    assert [e["name"] for e in cmp["estimators"] if e["bias_status"] == "resolved"] == ["tbptt"]
    assert all(e["bias"]["low"] == 0 for e in cmp["estimators"] if e["name"] != "tbptt")
    # and about the learned optimizer: "backprop at θ ± σε has a variance per batch ten
    # thousand times below ES's ... is the reference ... backprop is best, separated ...
    # truncated backprop's bias is resolved ..., PES's is not. ES's is resolved too (0.50
    # [0.14, 0.73], p = 0.03) ... cross-check ... (0.40, p = 0.14) ... the reference at 12
    # batches, fewer than 10 × ..."
    lopt = json.loads((folder / "compare_lopt" / "compare.json").read_text())
    assert lopt["reference"].startswith("reparam:") and lopt["reference_check"]["agree"]
    assert lopt["tied"] == ["backprop"] and lopt["recommended"] == "backprop"
    by = {e["name"]: e for e in lopt["estimators"]}
    assert by["tbptt"]["bias_status"] == "resolved"
    assert by["pes"]["bias"]["low"] == 0 and by["es"]["bias_status"] == "resolved"
    assert [round(by["es"]["bias"][k], 2) for k in ("value", "low", "high")] == [
        0.50,
        0.14,
        0.73,
    ] and round(by["es"]["bias_p"], 2) == 0.03
    assert round(lopt["reference_check"]["difference"]["value"], 2) == 0.40
    assert round(lopt["reference_check"]["p_value"], 2) == 0.14
    assert round(by["tbptt"]["bias"]["value"], 2) == 0.42
    assert round(lopt["reference_norm"], 2) == 0.46
    assert any("the reference has 12 batches, fewer than 10" in n for n in lopt["notes"])


def _gallery_numbers():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gallery_numbers", ROOT / "benchmarks" / "gallery_numbers.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _gallery_text() -> str:
    return _gallery_numbers().gallery_text()


def test_gallery_numbers_are_the_saved_results():
    """Each number benchmarks/gallery_numbers.py prints from a figure's saved meta.json is in
    that figure's paragraph of the gallery pages, and each decimal or scientific number in the
    paragraph is one it prints. Figures without a saved meta.json cannot be checked yet
    (listed)."""
    gn = _gallery_numbers()
    text = gn.gallery_text()
    found, unchecked = gn.numbers()
    assert {
        "toy",
        "packing",
        "spectra",
        "learning_rate",
        "rigid_body",
        "perturbation",
        "linear",
        "truncation",
        "perturbation_paper",
        "learning_rate_paper",
        "learned_optimizer",
        "learned_optimizer_paper",
        "lopt_estimators",
        "lopt_meta_training",
        "lopt_self_training",
        "lopt_generalization",
        "state_perturbation",
        "state_perturbation_paper",
    } <= set(found)
    # the gallery images whose quoted numbers predate saved metadata; shrink this list as
    # their figures are regenerated with a meta.json beside the PNG
    assert not unchecked, unchecked  # every gallery image has its meta.json
    for name, rows in found.items():
        para = gn.gallery_paragraph(text, name)
        printed = {v.lstrip("-") for _, v in rows}  # the pattern below reads no sign
        for label, value in rows:
            # the gallery writes a negative number with the minus sign, U+2212
            pattern = re.escape(value).replace(r"\-", "[-\u2212]")
            assert re.search(rf"(?<![\w.]){pattern}(?![\d])", para), (
                f"{name}: {label} = {value} (from its meta.json) is not in its gallery paragraph"
            )
        for quoted in gn.MEASURED.findall(para):
            assert quoted in printed, f"{name}: the gallery quotes {quoted}, not in its meta.json"


def test_smooth_words_in_the_gallery_are_backed_by_saved_verdicts():
    """Every "smooth"/"smoother" in the gallery is a claim listed in gallery_numbers'
    SMOOTH_CLAIMS for its figure's paragraph, and the roughness verdict it names (relative to
    the curve's range, against the noise floor of its seeds) is true in that meta.json."""
    gn = _gallery_numbers()
    text = gn.gallery_text()
    section = text  # every gallery page: the figures' and the introduction's
    claimed = 0
    for name in gn.gallery_pngs():
        para = gn.gallery_paragraph(text, name)
        words = sorted(w.lower() for w in gn.SMOOTH_WORDS.findall(para))
        claims = gn.SMOOTH_CLAIMS.get(name, [])
        assert words == sorted(w for w, _ in claims), (name, words, claims)
        meta = json.loads((gn.GALLERY / f"{name}.meta.json").read_text())
        for word, path in claims:
            assert gn.saved_verdict(meta, path) is True, (name, word, path)
        claimed += len(claims)
    # and none outside the figures' paragraphs (the introduction, what the paper shows)
    assert len(gn.SMOOTH_WORDS.findall(section)) == claimed
    # no saved fit says any growth in the gallery is exponential (Figure 3's is closer to a
    # power law: gallery_numbers.growth_fits); "best" only where the estimator study's tie
    # sets back it (test_estimator_study_sentences_match_its_saved_results)
    words = re.findall(r"\bexponential\w*", section, re.IGNORECASE)
    para = gn.gallery_paragraph(text, "learned_optimizer_paper")
    quick = " ".join(gn.gallery_paragraph(text, "learned_optimizer").split())
    assert len(re.findall(r"\bexponential", para)) == 2
    assert len(words) == 2 + len(re.findall(r"\bexponential", quick)) == 4
    # Figure 3 quick: the saved fits (chaosgrad.gradients.growth_fits, in its meta.json) say
    # which law leaves the smaller residual, over all unrolls and over the longer half
    q = json.loads((gn.GALLERY / "learned_optimizer.meta.json").read_text())
    assert "at shift 0 the power law T^2.3 leaves" in quick
    assert q["growth_fits"]["0.0"]["better"] == "power law"
    assert "at 0.008 T^0.59 leaves 0.86 against 0.55" in quick
    assert q["growth_fits"]["0.008"]["better"] == "exponential"
    assert "From 90 steps on, at shift 0 the exponential fits better" in quick
    assert q["growth_fits_tail"]["0.0"]["better"] == "exponential"
    assert "closer to a power law than to an exponential" in " ".join(para.split())
    meta = json.loads((gn.GALLERY / "learned_optimizer_paper.meta.json").read_text())
    for shift in ("0.0", "0.008"):
        fit = gn.growth_fits(meta["variance"][shift])
        assert fit["power_rms"] < fit["exp_rms"], (shift, fit)
    for name in gn.gallery_pngs():
        if name != "lopt_estimators":
            assert not re.search(r"\bbest\b", gn.gallery_paragraph(text, name)), name


def test_gallery_introduction_times_and_image_sizes_are_the_saved_ones():
    """The introduction's time per figure is the sentence gallery_numbers writes from each
    meta.json; every gallery PNG is what gallery_copy makes (≤ 1400 pixels wide, 256
    colours), as the introduction says."""
    from PIL import Image

    gn = _gallery_numbers()
    text = " ".join((gn.GALLERY / "index.md").read_text().split())
    assert " ".join(gn.intro_times().split()) in text
    for name in gn.gallery_pngs():
        with Image.open(gn.GALLERY / f"{name}.png") as im:
            assert im.width <= 1400 and im.mode == "P", (name, im.size, im.mode)


def test_gallery_number_format():
    gn = _gallery_numbers()
    assert [gn.fmt(x) for x in (0.0383, 2.35e-16, 2656.6, 0.1166)] == [
        "0.038",
        "2.4e-16",
        "2.7e3",
        "0.12",
    ]
    assert gn.fmt(1.2e23, 1) == "1e23" and gn.fmt(7.4e11, 1) == "7e11"


def test_estimator_study_sentences_match_its_saved_results():
    """The gallery's lopt_estimators paragraph, claim by claim, against its meta.json."""
    m = json.loads((ROOT / "docs/gallery/lopt_estimators.meta.json").read_text())
    r = m["results"]
    assert all(c["reference"].startswith("backprop") for d in r.values() for c in d.values())
    # λ1 measured once per shift, never resolved above 0.5/T at the longest T
    assert all(v["lambda1"][1] <= 0.5 / 256 for v in m["lyapunov"].values())
    assert m["crossover"] == {"0.0": 256, "0.002": None, "0.005": None, "0.008": None}
    assert m["reference_too_noisy_from"]["0.008"] == 128
    assert r["0.0"]["256"]["tied_for_best"] == ["combined"]
    for s in ("0.002", "0.005"):
        assert all("backprop" in r[s][t]["tied_for_best"] for t in r[s])
    assert len(r["0.008"]["256"]["tied_for_best"]) == 4
    assert r["0.008"]["256"]["estimators"]["combined"]["rel_error"] == [None] * 3
    ratios = []
    for s in ("0.0", "0.002", "0.005"):
        for t in ("128", "256"):
            e = r[s][t]["estimators"]
            ratios.append(e["pes"]["rel_error"][0] / e["backprop"]["rel_error"][0])
    assert round(min(ratios), -2) == 100 and round(max(ratios), -2) == 3300, ratios
    text = _gallery_numbers().gallery_paragraph(_gallery_text(), "lopt_estimators")
    assert "100 to 3,300 times backprop's" in text


def test_learned_optimizer_quick_run_time_is_the_saved_one():
    """The gallery's time of the three learned-optimizer figures, from their meta.json."""
    g = ROOT / "docs/gallery"
    secs = [
        json.loads((g / f"{n}.meta.json").read_text())["compute_seconds"]
        for n in ("learned_optimizer", "lopt_estimators", "lopt_meta_training")
    ]
    text = (g / "index.md").read_text()
    quoted = ", ".join(str(round(x)) for x in secs[:2]) + f" and {round(secs[2])} s"
    assert f"took {quoted}: {round(sum(secs) / 60)} minutes" in text.replace("\n", " ")


def _close(quoted: float, value: float, digits: int) -> bool:
    """``quoted`` is ``value`` rounded to ``digits`` significant digits."""
    import math

    if value == 0:
        return quoted == 0
    scale = 10 ** (math.floor(math.log10(abs(value))) - digits + 1)
    return abs(quoted - value) <= 0.5 * scale + 1e-12


def test_learned_optimizer_gallery_sentences_match_their_saved_results():
    """Figure 3 (quick and paper scale) and lopt_meta_training: each number the gallery
    quotes, against its meta.json (to the digits quoted)."""
    g = ROOT / "docs/gallery"
    text = _gallery_text()
    q = json.loads((g / "learned_optimizer.meta.json").read_text())
    assert [q["slices"][t]["extrema"] for t in ("8", "32", "128", "256", "512")] == [3, 4, 1, 3, 11]
    assert q["theta_choice"]["rule"].startswith("the roughest 128-step slice")
    assert _close(0.18, q["theta_choice"]["chosen_roughness"], 2)
    assert _close(0.69, q["slices"]["128"]["at_0"], 2)
    assert _close(-0.846, q["slices"]["512"]["min"], 3)
    sm = q["smoothing"]
    assert sm["std"] == 0.05 and sm["change"]["changed"]  # "changed by the rule ... only just"
    assert _close(0.24, sm["change"]["rms"], 2) and _close(0.12, sm["change"]["noise"], 2)
    assert sm["change"]["rms"] < 2.05 * sm["change"]["noise"]  # "only just"
    assert sm["change"]["samples"] == 32
    assert _close(0.092, sm["roughness"]["mean_roughness"], 2)
    assert sm["roughness"]["mean_roughness"] < sm["base_roughness"]  # "lower than the slice's"
    assert not sm["roughness"]["smoother"] and not sm["roughness"]["smooth"]
    v = q["variance_per_param"]
    assert _close(5.8e-8, v["0.0"]["10"], 2) and _close(1.4e-4, v["0.0"]["240"], 2)
    assert _close(2.2e-8, v["0.008"]["10"], 2) and _close(1.4e-7, v["0.008"]["240"], 2)
    assert "3, 4, 1, 3 and 11 local extrema" in text
    # which law fits, as the paragraph says it: power law over all unrolls at shift 0, the
    # exponential at 0.008 and from 90 steps on at shift 0
    f, tail = q["growth_fits"], q["growth_fits_tail"]
    assert f["0.0"]["better"] == "power law" and f["0.008"]["better"] == "exponential"
    assert tail["0.0"]["better"] == "exponential" and tail["0.0"]["from_T"] == 90
    p = json.loads((g / "learned_optimizer_paper.meta.json").read_text())
    assert p["scale"] == "paper" and p["precision"]["backend"] == "gpu"
    # which GPU is not in that meta.json (newer runs save device_kind): the text says so
    assert "device_kind" not in p["precision"]
    paper_para = " ".join(
        _gallery_numbers().gallery_paragraph(text, "learned_optimizer_paper").split()
    )
    assert "the GPU model not recorded" in paper_para and "H100" not in paper_para
    assert [p["slices"][t]["extrema"] for t in ("8", "32", "128", "256", "512", "1024")] == [
        1,
        2,
        12,
        16,
        52,
        62,
    ]
    assert _close(0.78, p["slices"]["128"]["at_0"], 2)
    assert _close(-1.95, p["slices"]["128"]["min"], 3)
    assert _close(-12.7, p["slices"]["1024"]["min"], 3)
    assert p["smoothing"]["extrema_of_mean"] == 2
    pv = p["variance"]
    assert _close(1.0e-4, pv["0.0"]["10"], 2) and _close(0.023, pv["0.0"]["120"], 2)
    assert _close(1.7e-4, pv["0.008"]["10"], 2) and _close(1.3, pv["0.008"]["120"], 2)
    m = json.loads((g / "lopt_meta_training.meta.json").read_text())
    tab = m["table"]
    quoted = {
        "learned (tbptt)": -1.22,
        "learned (backprop)": -1.08,
        "adam (lr 0.0316)": -0.91,
        "learned (pes)": -0.71,
        "learned (es)": 0.83,
        "learned (untrained init)": 0.92,
        "momentum (lr 0.178)": -0.22,
        "sgd (lr 0.562)": 0.41,
    }
    for name, value in quoted.items():
        assert round(tab[name]["T"]["meta_loss"], 2) == value, name
    assert _close(-0.31, m["vs_adam_at_T"]["tbptt"]["mean_difference_vs_adam"], 2)
    assert _close(-0.18, m["vs_adam_at_T"]["backprop"]["mean_difference_vs_adam"], 2)
    assert [k for k, r in m["vs_adam_at_T"].items() if r["beats_adam_at_T"]] == [
        "tbptt",
        "backprop",
    ]
    for name, v in {
        "learned (tbptt)": 11.3,
        "learned (backprop)": 0.1,
        "learned (es)": 0.9,
        "learned (pes)": -2.6,
        "adam (lr 0.0316)": -6.0,
    }.items():
        assert tab[name]["10T"]["nonfinite_seeds"] == 0
        assert round(tab[name]["10T"]["final_log_loss"], 1) == v, name  # as quoted: 0.1


def test_previous_run_claims_are_its_saved_results():
    """What the gallery says an earlier run found, from that run's saved meta.json."""
    prev = ROOT / "benchmarks/results/previous-run"
    est = json.loads((prev / "lopt_estimators.meta.json").read_text())
    assert {s: t for s, t in est["crossover"].items() if t} == {"0.002": 128}
    mt = json.loads((prev / "lopt_meta_training.meta.json").read_text())
    assert [k for k, v in mt["vs_adam_at_T"].items() if v["beats_adam_at_T"]] == ["tbptt"]
    assert mt["table"]["learned (es)"]["T"]["meta_loss"] < 0  # ES's optimizer did not stall


def test_benchmark_table_is_the_saved_run_and_its_ratios_are_saved():
    """The benchmarks page's block is benchmarks/results/bench.txt as printed, and every
    ratio its text after the block quotes (N.NN×) is in one of the saved runs (bench.txt,
    bench-history.md)."""
    text = BENCHMARKS_PAGE.read_text()
    start = text.index("# chaosgrad benchmarks:")
    block = text[start : text.index("```", start)]
    folder = ROOT / "benchmarks" / "results"
    assert block == (folder / "bench.txt").read_text()
    after = text[text.index("```", start) + 3 :]
    saved = "".join((folder / f).read_text() for f in ("bench.txt", "bench-history.md"))
    ratios = re.findall(r"(\d+\.\d\d)×", after)
    assert len(ratios) >= 8
    for r in ratios:
        assert re.search(rf"(?<![\d.]){re.escape(r)} \[", saved), f"{r}× is in no saved run"


def _readme_commands() -> list[str]:
    """Every command line of the README's bash blocks: continuation lines joined, comments
    dropped; and those quoted inline in its prose."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands.append(" ".join(line.split()))
    # and the ones named in the prose (`make bench`, `.venv/bin/mkdocs serve`)
    commands += re.findall(r"`((?:make|\.venv/bin/\w+) [^`]+)`", text)
    return commands


def test_the_readme_commands_are_known():
    """What the README tells a user to type is a make target, the site's server, or the
    `chaosgrad` command (run below); nothing else slips in untested."""
    commands = _readme_commands()
    assert {"make demo", "make test", "make docs"} <= set(commands)
    for command in commands:
        assert command.startswith(("make ", ".venv/bin/chaosgrad ", ".venv/bin/mkdocs serve")), (
            command
        )


def test_the_readme_make_targets_exist():
    """`make -n TARGET` (print, do not run) for each make command, and the docs extra that
    `make docs` installs brings mkdocs (for `.venv/bin/mkdocs serve`)."""
    import subprocess

    for command in _readme_commands():
        if command.startswith("make "):
            r = subprocess.run(
                ["make", "-n", *command.split()[1:]], cwd=ROOT, capture_output=True, text=True
            )
            assert r.returncode == 0, (command, r.stderr)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^docs = \["mkdocs==', pyproject, re.M)


def test_every_chaosgrad_command_of_the_readme_runs(tmp_path):
    """Each `.venv/bin/chaosgrad ...` line of the README, as written (this environment's
    `chaosgrad` for `.venv/bin/chaosgrad`), in an empty folder: exit status 0."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "chaosgrad"
    commands = [c for c in _readme_commands() if c.startswith(".venv/bin/chaosgrad ")]
    assert len(commands) >= 8
    for command in commands:
        argv = [str(exe), *command.split()[1:]]
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, (command, r.stderr[-2000:])
    assert (tmp_path / "out" / "diagnose").exists() and (tmp_path / "figs").exists()


def test_the_readme_example_runs():
    """The README's "your own system" block, run as a script: the Hénon map's exponents are
    the ones its comment quotes (≈ [0.42, -1.62])."""
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    start = text.index("## Your own system in a few lines")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    exponents = [float(x) for x in re.findall(r"-?\d+\.\d+", r.stdout.splitlines()[0])]
    assert round(exponents[0], 2) == 0.42 and round(exponents[1], 2) == -1.62
