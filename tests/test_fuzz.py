"""Reliability: generated bad input for the command line and the API.

Every bad input must end in exit status 2 and exactly one line on stderr (or, from the API,
an InputError naming the problem), never a traceback, never a partial file; every `--json`
output must be strict JSON. Generation uses hypothesis with few examples and tiny systems
(logistic, Hénon, a 2-d linear map), so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from chaosgrad.estimators.meta import OutputLock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chaosgrad
from chaosgrad import systems
from chaosgrad.app import figures
from chaosgrad.app.cli import main
from chaosgrad.errors import InputError
from chaosgrad.params import parse_kv
from chaosgrad.system import check_system

# In `make test` the examples are few and derandomized (the same every run, within the time
# budget); CHAOSGRAD_FUZZ_EXAMPLES=500 explores at random. capsys and tmp_path are shared by
# a test's examples (each example clears capsys or uses its own sub-folder), so the
# function-scoped-fixture health check does not apply.
_DEEP = int(os.environ.get("CHAOSGRAD_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int):
    """hypothesis settings for ``examples`` cases per run (or CHAOSGRAD_FUZZ_EXAMPLES)."""
    return settings(
        max_examples=_DEEP or examples,
        deadline=None,
        derandomize=not _DEEP,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


FUZZ = fuzz(12)


def _reject_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def strict_json(text: str):
    """Parse ``text`` as strict JSON: NaN, Infinity and -Infinity are errors."""
    return json.loads(text, parse_constant=_reject_constant)


def run(argv, capsys) -> tuple[int, str, str]:
    """``chaosgrad argv`` in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, needle: str | None = None):
    """Exit 2, one line on stderr naming the problem, no traceback."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error:" in lines[0]
    if needle is not None:
        assert needle in lines[0], lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files under ``folder`` (atomic writes leave none)."""
    if not folder.exists():
        return []
    return [
        str(p)
        for p in folder.rglob("*")
        if p.name.endswith(".tmp")
        or ".tmp." in p.name
        or p.name.startswith(".cli")
        or p.name.startswith(".chaosgrad-probe")
    ]


# -- numbers on the command line -----------------------------------------------------------
TOO_BIG = st.integers(min_value=2**32, max_value=10**30)
NOT_INT = st.sampled_from(["", "x", "1.5", "1e11", "nan", "inf", "0x10", "--", "½"])


@FUZZ
@given(
    option=st.sampled_from(["--steps", "--seed", "--transient", "--k"]),
    value=st.one_of(TOO_BIG, st.integers(max_value=-1), NOT_INT),
)
def test_fuzz_integer_options_of_spectrum(option, value, capsys):
    code, out, err = run(["spectrum", "henon", option, value, "--no-progress"], capsys)
    assert_refused(code, err)
    assert out == ""


@FUZZ
@given(
    argv=st.sampled_from(
        [
            ["grad-growth", "henon", "--horizons"],
            ["grad-growth", "henon", "--seeds"],
            ["grad-growth", "henon", "--lyapunov-steps"],
            ["meta-train", "henon", "--out", "m", "--steps"],
            ["meta-train", "henon", "--out", "m", "--eval-seeds"],
            ["meta-train", "henon", "--out", "m", "--log-every"],
        ]
    ),
    value=st.one_of(TOO_BIG, st.integers(max_value=-1), NOT_INT),
)
def test_fuzz_integer_options_elsewhere(argv, value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv + [value], capsys)
    assert_refused(code, err)
    assert not (tmp_path / "m").exists()  # refused before anything was made


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["spectrum", "henon", "--seed", "99999999999999999999"], "accepted: 0..4294967295"),
        (["spectrum", "henon", "--steps", "3000000000"], "accepted: 1..2147483647"),
        (["grad-growth", "henon", "--horizons", "10,10000000000"], "accepted: 1..2147483647"),
        (["grad-growth", "henon", "--lyapunov-steps", "-10"], "expected an integer in 0.."),
        (["meta-train", "henon", "--lr", "inf", "--out", "m"], "expected a finite number"),
        (["compare", "henon", "--sigma", "nan"], "expected a finite number"),
        (["grad-growth", "henon", "--seeds", "1e11"], "expected a positive integer"),
        (["grad-growth", "henon", "--seeds", "100000000000"], "accepted: 1..2147483647"),
    ],
)
def test_out_of_range_values_are_refused_in_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert_refused(code, err, needle)


# -- k=v parameters ---------------------------------------------------------------------------
NONFINITE = st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e400"])


@FUZZ
@given(
    name_key=st.sampled_from([("henon", "a"), ("henon", "b"), ("logistic", "r"), ("rnn", "g")]),
    value=st.one_of(NONFINITE, st.text(alphabet="xyz!@ ,", min_size=1, max_size=5)),
)
def test_fuzz_bad_system_parameter_values(name_key, value, capsys):
    name, key = name_key
    code, out, err = run(["spectrum", name, "--param", f"{key}={value}", "--json"], capsys)
    assert_refused(code, err, f"'{key}'")
    assert out == ""


@FUZZ
@given(key=st.sampled_from(["a", "b"]), v1=st.floats(0.1, 2), v2=st.floats(0.1, 2))
def test_fuzz_repeated_parameter_is_refused(key, v1, v2, capsys):
    code, _, err = run(
        ["spectrum", "henon", "--param", f"{key}={v1}", "--param", f"{key}={v2}"], capsys
    )
    assert_refused(code, err, "given twice")


@FUZZ
@given(
    est=st.sampled_from(["es", "pes", "tbptt", "backprop"]),
    kv=st.sampled_from(
        ["clip_norm=nan", "clip_norm=inf", "sigma=nan", "window=x", "nosuch=1", "clip_norm=1=2"]
    ),
)
def test_fuzz_bad_estimator_parameters(est, kv, capsys, tmp_path):
    if kv.startswith("sigma") and est in ("tbptt", "backprop"):
        kv = "clip_norm=-inf"
    out_dir = tmp_path / f"m-{est}"
    code, _, err = run(
        [
            "meta-train",
            "linear",
            "--param",
            "n=2",
            "--estimator",
            est,
            "--est-param",
            kv,
            "--out",
            out_dir,
        ],
        capsys,
    )
    assert_refused(code, err)
    assert not (out_dir / "checkpoint.npz").exists()


def test_a_factory_may_declare_nonfinite_parameters():
    import inspect

    accepted = {"a": inspect.Parameter("a", inspect.Parameter.KEYWORD_ONLY, default=1.0)}
    with pytest.raises(InputError, match="not a finite number"):
        parse_kv(["a=nan"], accepted, "system 'x'", "--param")
    assert np.isnan(parse_kv(["a=nan"], accepted, "system 'x'", "--param", {"a"})["a"])


# -- output paths, checked before any compute ------------------------------------------------
def _bad_path(flag: str, kind: str, root: Path) -> Path:
    """A path that ``flag`` (--out: a folder, --plot: a file) cannot use."""
    (root / "afile").write_text("x")
    if flag == "--out":
        return {
            "file": root / "afile",
            "file_above": root / "afile" / "sub",
            "unwritable": Path("/proc/chaosgrad-test/out"),
        }[kind]
    return {
        "file": root,
        "file_above": root / "afile" / "x.png",
        "missing_parent": root / "no" / "such" / "x.png",
        "unwritable": Path("/proc/chaosgrad-test.png"),
    }[kind]


@pytest.mark.parametrize("kind", ["file", "file_above", "missing_parent", "unwritable"])
@fuzz(5)
@given(
    cmd=st.sampled_from(
        [
            ["spectrum", "henon", "--plot"],
            ["grad-growth", "henon", "--plot"],
            ["diagnose", "henon", "--out"],
            ["diagnose", "henon", "--plot"],
            ["compare", "henon", "--out"],
            ["compare", "henon", "--plot"],
            ["meta-train", "henon", "--out"],
            ["figures", "toy", "--out"],
            ["demo", "--out"],
        ]
    )
)
def test_fuzz_bad_output_paths(kind, cmd, capsys, tmp_path_factory):
    """--out onto a file, below a file or in a read-only place; --plot onto a folder, below
    a file, into a missing folder or a read-only one: refused before any compute."""
    root = tmp_path_factory.mktemp("paths")
    if cmd[-1] == "--out" and kind == "missing_parent":
        kind = "file_above"  # a missing --out folder is fine: it is made
    path = _bad_path(cmd[-1], kind, root)
    code, out, err = run(cmd + [path], capsys)
    assert_refused(code, err, str(path))
    assert out == ""
    assert sorted(p.name for p in root.iterdir()) == ["afile"]  # nothing was written


def test_plot_leaves_only_the_png(tmp_path, capsys):
    png = tmp_path / "conv.png"
    code, out, err = run(
        [
            "spectrum",
            "henon",
            "--steps",
            "200",
            "--transient",
            "0",
            "--seed",
            "4294967295",  # the largest seed accepted still runs
            "--plot",
            png,
            "--json",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    strict_json(out)
    assert [p.name for p in tmp_path.iterdir()] == ["conv.png"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_console_script_bad_path_one_line(tmp_path):
    """The installed command, end to end: exit 2, one line, no traceback."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "chaosgrad.app.cli",
            "spectrum",
            "henon",
            "--plot",
            str(tmp_path / "missing" / "x.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and "does not exist" in r.stderr


def test_os_error_during_a_run_is_one_line(tmp_path, capsys, monkeypatch):
    # The folder is fine when checked, then becomes unusable: the OSError is still one line.
    import chaosgrad.app.cli as cli

    monkeypatch.setattr(cli, "check_outputs", lambda args: None)
    (tmp_path / "afile").write_text("x")
    code, _, err = run(["demo", "--out", tmp_path / "afile" / "demo"], capsys)
    assert_refused(code, err, "afile")


# -- memory estimated up front --------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["spectrum", "rnn", "--param", "n=100000"],
        ["grad-growth", "henon", "--seeds", "2000000000"],
        ["grad-growth", "rnn", "--param", "n=512", "--seeds", "100000000", "--horizons", "1000"],
    ],
)
def test_requests_that_cannot_fit_are_refused_with_the_figure(argv, capsys):
    code, _, err = run(argv, capsys)
    assert_refused(code, err, "of memory, more than the")
    assert "GiB" in err or "TiB" in err


def test_large_requests_are_announced():
    from chaosgrad.memory import LargeRequest, check_fits

    with pytest.warns(LargeRequest, match="rnn n=30000 needs about 10.1 GiB of the 16.0 GiB"):
        check_fits(30000**2 * 12, "rnn n=30000", available=16 * 1024**3)
    with pytest.raises(InputError, match="needs about 10.1 GiB of memory, more than the 8.0"):
        check_fits(30000**2 * 12, "rnn n=30000", available=8 * 1024**3)


def test_resumed_progress_estimates_the_time_left_from_the_work_after_resuming(monkeypatch, capsys):
    """A resumed run (`skip`) judges the time left from the pieces it ran itself, after the
    first (which compiles): a first piece of 100 s, then 10 s for one piece, 498 pieces left →
    about 83.0 minutes (not from the 501 counted as done, nor from the compiling piece)."""
    from chaosgrad import progress

    times = iter([0.0, 0.0, 100.0, 110.0])  # start, skip, end of piece 1, end of piece 2
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(times))
    with progress.progress_bar(1000, "meta-train", enabled=None) as bar:
        bar.skip(500)
        bar.update(1)
        assert capsys.readouterr().err == ""  # nothing judged from the compiling piece
        bar.update(1)
    err = capsys.readouterr().err
    assert "about 83.0 more minutes (estimated from 1 of 499 timed)" in err


# -- strict JSON on every --json output ------------------------------------------------------
@fuzz(6)
@given(r=st.floats(3.6, 6.0), steps=st.integers(20, 60))
def test_fuzz_spectrum_json_is_strict(r, steps, capsys):
    # r > 4 escapes to -inf within a few steps: the exponent is non-finite, printed as null
    code, out, err = run(
        [
            "spectrum",
            "logistic",
            "--param",
            f"r={r}",
            "--steps",
            steps,
            "--transient",
            "0",
            "--json",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    res = strict_json(out)
    lam = res["exponents"][0]
    assert lam is None or np.isfinite(lam)
    if lam is None:
        assert res["nonfinite_values"] >= 1  # counted, so null-by-overflow is visible


def test_spectrum_json_of_a_diverging_learned_optimizer_is_strict(capsys):
    code, out, err = run(
        [
            "spectrum",
            "lopt",
            "--param",
            "optimizer=sgd",
            "--param",
            "lr=1e30",
            "--steps",
            "50",
            "--transient",
            "0",
            "--k",
            "1",
            "--json",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    res = strict_json(out)
    assert res["exponents"] == [None] and res["nonfinite_values"] >= 1


def test_grad_growth_and_systems_json_are_strict(capsys):
    code, out, _ = run(
        [
            "grad-growth",
            "logistic",
            "--param",
            "r=4.5",
            "--horizons",
            "5,50",
            "--seeds",
            "2",
            "--lyapunov-steps",
            "20",
            "--json",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0
    res = strict_json(out)
    assert res["lyapunov_max"] is None and res["nonfinite_values"] > 0
    code, out, _ = run(["systems", "--json"], capsys)
    assert code == 0 and strict_json(out)


# -- meta-train: one run per folder, resumed only into the same run ------------------------------
MT_BASE = [
    "meta-train",
    "linear",
    "--param",
    "n=2",
    "--estimator",
    "backprop",
    "--est-param",
    "samples=2",
    "--est-param",
    "horizon=8",
    "--no-progress",
]
MT = MT_BASE + ["--log-every", "2"]


def test_meta_train_resume_mismatch_names_the_field(tmp_path, capsys):
    out = tmp_path / "m"
    code, text, err = run(MT + ["--steps", "4", "--out", out, "--json"], capsys)
    assert code == 0, err
    first = strict_json(text)
    assert first["steps_done"] == 4
    for extra, field in [
        (["--lr", "0.1"], "outer.lr"),
        (["--eval-seeds", "3"], "eval_seeds"),
        (["--log-every", "1"], "log_every"),
        (["--seed", "1"], "key"),
        (["--est-param", "remat_chunk=2"], "params.remat_chunk"),
    ]:
        argv = MT_BASE + extra + ([] if "--log-every" in extra else ["--log-every", "2"])
        code, _, err = run(argv + ["--steps", "6", "--out", out], capsys)
        assert_refused(code, err, field)
        assert "--no-resume" in err
    # fewer steps than already done: refused with the way forward
    code, _, err = run(MT + ["--steps", "2", "--out", out], capsys)
    assert_refused(code, err, "at step 4, past the 2 steps")
    # --no-resume starts over with the new settings
    code, text, err = run(
        MT + ["--steps", "2", "--lr", "0.1", "--out", out, "--json", "--no-resume"], capsys
    )
    assert code == 0, err
    assert strict_json(text)["steps_done"] == 2
    res = strict_json((out / "results.json").read_text())
    assert res["steps"] == 2 and [e["step"] for e in res["evals"]] == [0, 2]
    # output files have normal permissions (the umask's), and nothing partial is left
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.json", "log.jsonl", "checkpoint.npz", "theta.npz", "curves.npz"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert leftovers(out) == [] and not (out / ".lock").exists()


def test_meta_train_nan_is_null_not_a_string(tmp_path, capsys):
    out = tmp_path / "nan"
    code, text, err = run(MT + ["--steps", "2", "--lr", "1e30", "--out", out, "--json"], capsys)
    assert code == 0, err
    summary = strict_json(text)
    assert summary["final_meta_loss"] is None and summary["nonfinite_values"] >= 1
    res = strict_json((out / "results.json").read_text())
    assert res["final_meta_loss"] is None
    assert all(isinstance(e["meta_loss"], float) or e["meta_loss"] is None for e in res["evals"])
    for line in (out / "log.jsonl").read_text().splitlines():
        rec = strict_json(line)
        assert not any(v == "nan" for v in rec.values())


def test_meta_train_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    with OutputLock(out):  # a live run holds the folder
        code, _, err = run(MT + ["--steps", "2", "--out", out], capsys)
        assert_refused(code, err, f"in use by another meta-train run (pid {os.getpid()})")
        assert not (out / "checkpoint.npz").exists()
    # a lock file left by a dead process (no one holds it) is taken over
    (out / ".lock").write_text("999999999\n")
    code, _, err = run(MT + ["--steps", "2", "--out", out], capsys)
    assert code == 0, err
    assert (out / "checkpoint.npz").exists() and not (out / ".lock").exists()


def _meta_api(out, steps, callback=None, optimizer="adam", config=True):
    import optax
    from chaosgrad.estimators.meta import meta_train

    from chaosgrad import estimators

    s = systems.make("linear", n=2)
    est = estimators.make("backprop", s, samples=2, horizon=8)
    return meta_train(
        s,
        est,
        getattr(optax, optimizer)(0.01),
        steps,
        out,
        jax.random.PRNGKey(0),
        log_every=2,
        checkpoint_every=100,
        eval_seeds=2,
        callback=callback,
        outer_config={"optimizer": optimizer, "lr": 0.01} if config else None,
    )


def test_meta_train_api_without_outer_config_still_tells_optimizers_apart(tmp_path):
    _meta_api(tmp_path, 2, config=False)
    with pytest.raises(InputError, match="outer.state"):
        _meta_api(tmp_path, 4, optimizer="sgd", config=False)


def test_meta_train_sigterm_checkpoints_like_ctrl_c(tmp_path):
    def term(step, rec):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    cut = _meta_api(tmp_path / "cut", 6, term)
    assert cut.interrupted and cut.step == 3
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is restored
    with np.load(tmp_path / "cut" / "checkpoint.npz") as z:
        assert int(z["step"]) == 3
    resumed = _meta_api(tmp_path / "cut", 6)
    assert resumed.step == 6 and not resumed.interrupted
    assert [e["step"] for e in resumed.evals] == [0, 2, 4, 6]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "wrong_shape", "missing_leaf"])
def test_damaged_checkpoint_is_named_with_the_way_out(damage, tmp_path):
    out = tmp_path / "m"
    _meta_api(out, 2)
    ckpt = out / "checkpoint.npz"
    data = ckpt.read_bytes()
    if damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        ckpt.write_bytes(os.urandom(300))
    else:
        z = dict(np.load(ckpt))
        if damage == "wrong_shape":
            z["leaf_0"] = np.zeros((3, 3), z["leaf_0"].dtype)
        else:
            del z["leaf_1"]
        np.savez(ckpt, **z)
    with pytest.raises(InputError, match="checkpoint.*--no-resume") as e:
        _meta_api(out, 4)
    assert str(ckpt) in str(e.value)


# -- figure parts: keyed by configuration, --force recomputes ----------------------------------
def test_figure_parts_keyed_by_configuration_and_force_recomputes(tmp_path, monkeypatch):
    from chaosgrad.app.figures import toy

    monkeypatch.setitem(toy.SIZES, "quick", {"samples": 50, "xs": 5, "ws": 2})
    figures.run_figure("toy", "quick", tmp_path)

    def meta():
        return strict_json((tmp_path / "toy" / "meta.json").read_text())

    assert meta()["parts_reused"] == 0
    parts = sorted((tmp_path / "toy" / "parts").iterdir())
    stamps = [p.stat().st_mtime_ns for p in parts]
    figures.run_figure("toy", "quick", tmp_path, force=True)
    assert meta()["parts_reused"] == 0  # --force recomputes every part, and rewrites it
    assert all(p.stat().st_mtime_ns > t for p, t in zip(parts, stamps, strict=True))
    monkeypatch.setitem(toy.SIZES, "quick", {"samples": 50, "xs": 5, "ws": 3})
    figures.run_figure("toy", "quick", tmp_path)  # results exist, but of another config
    assert meta()["parts_reused"] == 0 and meta()["config_hash"] == figures.config_hash(
        "toy", "quick"
    )
    # a damaged part is named
    part = next(
        (tmp_path / "toy" / "parts").glob(f"quick-{figures.config_hash('toy', 'quick')}-*.npz")
    )
    part.write_bytes(b"PK\x03\x04garbage")
    (tmp_path / "toy" / "results.npz").unlink()
    with pytest.raises(InputError, match=part.name):
        figures.run_figure("toy", "quick", tmp_path)


def test_figure_parts_of_edited_code_are_not_reused(tmp_path, monkeypatch):
    """Parts are keyed on chaosgrad's source too: the same settings under other code (an
    edit within one version) recompute every part instead of reusing stale ones."""
    from chaosgrad.app.figures import toy

    monkeypatch.setitem(toy.SIZES, "quick", {"samples": 50, "xs": 5, "ws": 2})
    h = figures.code_hash()
    assert len(h) == 16 and h == figures.code_hash()  # deterministic
    figures.run_figure("toy", "quick", tmp_path)
    (tmp_path / "toy" / "results.npz").unlink()
    figures.run_figure("toy", "quick", tmp_path)  # same code: an interrupted run resumes
    meta = strict_json((tmp_path / "toy" / "meta.json").read_text())
    assert meta["parts_reused"] > 0
    # rebuilt from parts, it still reports what the parts cost to compute
    assert meta["compute_seconds"] > meta["seconds"]
    monkeypatch.setattr(figures, "code_hash", lambda: "edited-source")
    (tmp_path / "toy" / "results.npz").unlink()
    figures.run_figure("toy", "quick", tmp_path)
    meta = strict_json((tmp_path / "toy" / "meta.json").read_text())
    assert meta["parts_reused"] == 0


# -- the API: a system is checked at first use ----------------------------------------------
def _henon(mutation: str) -> tuple[chaosgrad.System, object]:
    """A Hénon map with one mistake; returns (system, theta to call it with)."""
    theta = jnp.array([1.4, 0.3])

    def init(key, th):
        return jax.random.uniform(key, (2,), minval=-0.1, maxval=0.1)

    def nxt(x, th):
        return jnp.stack([1 - th[0] * x[0] ** 2 + x[1], th[1] * x[0]])

    def step(x, th, key):
        y = nxt(x, th)
        if mutation == "no_out":
            return y
        if mutation == "state_shape":
            return jnp.concatenate([y, y[:1]]), chaosgrad.StepOut(loss=y[0])
        if mutation == "state_dtype":
            return y.astype(jnp.int32), chaosgrad.StepOut(loss=y[0])
        if mutation == "state_structure":
            return (y, y), chaosgrad.StepOut(loss=y[0])
        if mutation == "loss_vector":
            return y, chaosgrad.StepOut(loss=y)
        if mutation == "python_if":
            if y[0] > 0:
                return y, chaosgrad.StepOut(loss=y[0])
        return y, chaosgrad.StepOut(loss=y[0])

    call_theta = {
        "theta_short": jnp.array([1.4]),
        "theta_long": jnp.array([1.4, 0.3, 0.1]),
        "theta_int": jnp.array([1, 0]),
        "theta_tree": {"a": jnp.array(1.4), "b": jnp.array(0.3)},
    }.get(mutation)
    return chaosgrad.System(init, step, name=f"bad-{mutation}", theta=theta), call_theta


MUTATIONS = {
    "no_out": "must return (new_state, out)",
    "state_shape": "expected it unchanged from init",
    "state_dtype": "expected it unchanged from init",
    "state_structure": "returned a state of structure",
    "loss_vector": "expected a scalar float",
    "python_if": "use jnp.where or lax.cond",
    "theta_short": "expected [2]",
    "theta_long": "expected [2]",
    "theta_int": "floating-point leaves",
    "theta_tree": "expected the structure of its default theta",
}


def _entry_points():
    from chaosgrad.gradients import gradient_growth
    from chaosgrad.jacobian import step_jacobian
    from chaosgrad.spectra import lyapunov_spectrum
    from chaosgrad.unroll import unroll, unroll_grad

    return {
        "unroll": lambda s, th: unroll(s, th, steps=5),
        "unroll_grad": lambda s, th: unroll_grad(s, th, steps=5),
        "lyapunov_spectrum": lambda s, th: lyapunov_spectrum(
            s, th, steps=5, transient=0, progress=False
        ),
        "gradient_growth": lambda s, th: gradient_growth(
            s, th, horizons=[2, 3], seeds=2, progress=False
        ),
        "step_jacobian": lambda s, th: step_jacobian(s, th),
    }


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@fuzz(3)
@given(entry=st.sampled_from(sorted(_entry_points())))
def test_fuzz_broken_systems_are_named_at_first_use(mutation, entry):
    system, theta = _henon(mutation)
    with pytest.raises(InputError) as e:
        _entry_points()[entry](system, theta)
    msg = str(e.value)
    assert MUTATIONS[mutation] in msg and f"bad-{mutation}" in msg
    assert ("step(state, theta, key)" in msg) != mutation.startswith("theta_")


@pytest.mark.parametrize("mutation", ["no_out", "loss_vector", "python_if"])
def test_a_broken_user_system_on_the_command_line_is_one_line(mutation, tmp_path, capsys):
    src = tmp_path / "mysys.py"
    src.write_text(
        "import jax, jax.numpy as jnp, chaosgrad\n"
        "def make(a: float = 1.4):\n"
        "    def init(key, th):\n"
        "        return jnp.zeros(2)\n"
        "    def step(x, th, key):\n"
        "        y = jnp.stack([1 - th[0] * x[0] ** 2 + x[1], 0.3 * x[0]])\n"
        f"        mutation = {mutation!r}\n"
        "        if mutation == 'no_out':\n"
        "            return y\n"
        "        if mutation == 'python_if' and y[0] > 0:\n"
        "            return y, y[0]\n"
        "        return y, (y if mutation == 'loss_vector' else y[0])\n"
        "    return chaosgrad.System(init, step, name='mine', theta=jnp.array([a]))\n"
    )
    code, out, err = run(["spectrum", f"{src}:make", "--json"], capsys)
    assert_refused(code, err, MUTATIONS[mutation])
    assert "step(state, theta, key) of system 'mine'" in err and out == ""


def test_system_check_is_cached_and_passes_good_systems(monkeypatch):
    import dataclasses

    from chaosgrad import validation

    s = dataclasses.replace(systems.make("henon"))  # unmarked: checked in full once
    traced = []
    trace = validation._trace
    monkeypatch.setattr(validation, "_trace", lambda *a: traced.append(a[1]) or trace(*a))
    check_system(s)
    first = len(traced)
    for _ in range(1000):
        check_system(s)  # a dictionary look-up once checked: nothing traced again
    assert first >= 2 and len(traced) == first
    monkeypatch.undo()
    for name in ("logistic", "lorenz", "linear", "heat", "influence", "rnn"):
        check_system(systems.make(name))
    # a batch of θ (the loss slices' vmap) is checked member by member
    check_system(s, jnp.stack([s.theta, s.theta]), batched=True)
    with pytest.raises(InputError, match="expected"):
        check_system(s, jnp.ones((2, 3)), batched=True)


def test_built_in_systems_pass_the_full_check(monkeypatch):
    """`systems.make` marks the systems of chaosgrad's own factories: at their default θ's
    signature `check_system` skips its traces (each traces the step again), so the full
    check of each runs here on a copy, which is never marked; a θ of another signature is
    checked in full."""
    import dataclasses

    from chaosgrad import validation

    for name in ("logistic", "henon", "lorenz", "linear", "heat", "influence", "rnn", "md", "lopt"):
        s = systems.make(name)
        assert s in validation._BUILT_IN, name
        copy = dataclasses.replace(s)
        assert copy not in validation._BUILT_IN
        check_system(copy)  # init, step and the phase round trip, traced
    traced = []
    trace = validation._trace
    monkeypatch.setattr(validation, "_trace", lambda *a: traced.append(a[1]) or trace(*a))
    s = systems.make("henon")
    check_system(s)
    assert traced == []
    check_system(s, s.theta.astype(jnp.float32))  # another signature: checked in full
    assert traced[:2] == ["init(key, theta)", "step(state, theta, key)"]


def test_options_are_taken_by_their_full_names_only(capsys):
    """`--n 64` (a system parameter written as an option) is refused with the way to pass it,
    not read as an abbreviation of --no-progress; `n=3` likewise."""
    code, _, err = run(["diagnose", "rnn", "--n", "64"], capsys)
    assert_refused(
        code, err, "unrecognized arguments: --n 64; a system's parameters go as --param K=V"
    )
    code, _, err = run(["diagnose", "rnn", "n=3"], capsys)
    assert_refused(code, err, "n=3; a system's parameters go as --param K=V")
    code, _, err = run(["diagnose", "rnn", "--no-prog"], capsys)
    assert_refused(code, err, "--no-prog")


# -- the compile cache never serves a stale program ----------------------------------
_HENON_CELL = """
import jax, jax.numpy as jnp, chaosgrad
A = {a}
def make():
    def init(key, theta):
        return jax.random.uniform(key, (2,), minval=-0.1, maxval=0.1)
    def step(s, theta, key):
        s = jnp.stack([1 - A * s[0] ** 2 + s[1], 0.3 * s[0]])
        return s, chaosgrad.StepOut(loss=s[0])
    return chaosgrad.System(init, step, name="h", theta=jnp.zeros(()))
"""


def _lambda1(system):
    from chaosgrad.spectra import lyapunov_spectrum

    return float(lyapunov_spectrum(system, steps=300, transient=50, progress=False).exponents[0])


def test_a_redefined_step_reading_a_changed_global_is_compiled_afresh():
    # A notebook cell run with A = 1.4 and again with A = 0.2 in one namespace: the second
    # run must give the stable map's exponents, not the first run's.
    ns: dict = {}
    exec(_HENON_CELL.format(a=1.4), ns)
    chaotic = _lambda1(ns["make"]())
    exec(_HENON_CELL.format(a=0.2), ns)
    stable = _lambda1(ns["make"]())
    assert chaotic > 0.2 and stable < 0, (chaotic, stable)
    # the same function object, its global changed under it (no redefinition)
    system = ns["make"]()
    ns["A"] = 1.4
    assert _lambda1(system) == pytest.approx(chaotic)
    ns["A"] = 0.2
    assert _lambda1(system) == pytest.approx(stable)


def test_closure_values_mutated_in_place_are_compiled_afresh():
    from chaosgrad.system import compile_key

    for holder, set_a in [
        (np.array([1.4]), lambda h, v: h.__setitem__(0, v)),  # numpy: by content
        ([1.4], lambda h, v: h.__setitem__(0, v)),  # list: by value
        ({"a": 1.4}, lambda h, v: h.__setitem__("a", v)),
    ]:
        key_of = (lambda h: h[0]) if not isinstance(holder, dict) else (lambda h: h["a"])

        def init(key, theta):
            return jax.random.uniform(key, (2,), minval=-0.1, maxval=0.1)

        def step(s, theta, key, holder=holder, key_of=key_of):
            s = jnp.stack([1 - key_of(holder) * s[0] ** 2 + s[1], 0.3 * s[0]])
            return s, chaosgrad.StepOut(loss=s[0])

        system = chaosgrad.System(init, step, theta=jnp.zeros(()))
        before = compile_key(system)
        chaotic = _lambda1(system)
        set_a(holder, 0.2)
        assert compile_key(system) != before
        assert _lambda1(system) < 0 < chaotic


def test_built_in_systems_still_share_compiled_programs():
    from chaosgrad.system import compile_key

    for name in ("logistic", "henon", "lorenz", "rnn"):
        assert compile_key(systems.make(name)) == compile_key(systems.make(name))


# -- a run's identity includes its code -------------------------------------------------
_USER_SYS = """
import jax, jax.numpy as jnp, chaosgrad
def make():
    def init(key, theta):
        return 0.1 * jnp.ones(2)
    def step(x, theta, key):
        x = jnp.{f}(theta * x)
        return x, chaosgrad.StepOut(loss={loss})
    return chaosgrad.System(init, step, name="same-name", theta=jnp.array([0.5, 0.5]),
                            horizon=4)
"""
MT_USER = [
    "--estimator",
    "backprop",
    "--est-param",
    "samples=1",
    "--est-param",
    "horizon=4",
    "--log-every",
    "2",
    "--eval-seeds",
    "1",
    "--no-progress",
]


def test_meta_train_refuses_to_resume_a_different_system_of_the_same_name(tmp_path, capsys):
    a, b = tmp_path / "sysA.py", tmp_path / "sysB.py"
    a.write_text(_USER_SYS.format(f="tanh", loss="jnp.sum(x ** 2)"))
    b.write_text(_USER_SYS.format(f="sin", loss="-jnp.sum(x)"))
    out = tmp_path / "m"
    code, _, err = run(["meta-train", f"{a}:make", "--steps", "2", "--out", out] + MT_USER, capsys)
    assert code == 0, err
    code, _, err = run(["meta-train", f"{b}:make", "--steps", "4", "--out", out] + MT_USER, capsys)
    assert_refused(code, err, "code.system")
    assert "--no-resume" in err
    assert strict_json((out / "results.json").read_text())["steps_done"] == 2  # untouched
    # the same code reading another global value is another run too
    a.write_text("SCALE = 2.0\n" + _USER_SYS.format(f="tanh", loss="SCALE * jnp.sum(x ** 2)"))
    code, _, err = run(["meta-train", f"{a}:make", "--steps", "4", "--out", out] + MT_USER, capsys)
    assert_refused(code, err, "code.system")
    # the very same code resumes
    a.write_text(_USER_SYS.format(f="tanh", loss="jnp.sum(x ** 2)"))
    code, _, err = run(["meta-train", f"{a}:make", "--steps", "4", "--out", out] + MT_USER, capsys)
    assert code == 0, err
    assert [e["step"] for e in strict_json((out / "results.json").read_text())["evals"]] == [
        0,
        2,
        4,
    ]


def test_no_resume_removes_the_old_outputs_before_the_first_step(tmp_path):
    out = tmp_path / "m"
    _meta_api(out, 2)
    names = ("checkpoint.npz", "results.json", "theta.npz", "curves.npz", "log.jsonl")
    assert all((out / n).exists() for n in names)

    def killed(step, rec):  # a hard stop before any checkpoint: nothing of the old run stays
        assert not any((out / n).exists() for n in names)
        raise SystemExit(9)

    import optax
    from chaosgrad.estimators.meta import meta_train  # noqa: F401

    from chaosgrad import estimators

    s = systems.make("linear", n=2)
    est = estimators.make("backprop", s, samples=2, horizon=8)
    with pytest.raises(SystemExit):
        meta_train(
            s,
            est,
            optax.adam(0.01),
            4,
            out,
            jax.random.PRNGKey(0),
            log_every=2,
            checkpoint_every=100,
            eval_seeds=2,
            callback=killed,
            resume=False,
        )
    assert not any((out / n).exists() for n in names)


# -- every failure of user code in one line ---------------------------------------------
_GOOD_FACTORY = """
import jax.numpy as jnp, chaosgrad
def make(a: float = 1.4):
    def init(key, th):
        return jnp.zeros(2)
    def step(x, th, key):
        y = jnp.stack([1 - th[0] * x[0] ** 2 + x[1], 0.3 * x[0]])
        return y, y[0]
    return chaosgrad.System(init, step, name='mine', theta=jnp.array([a]))
"""
USER_FAILURES = {
    # name: (source, what the one line must say)
    "raises": ("def make():\n    raise ValueError('boom')\n", "raised ValueError: boom"),
    "positional": ("def make(n):\n    pass\n", "needs n with no default"),
    "keyword_only": ("def make(*, n):\n    pass\n", "needs n with no default"),
    "positional_only": ("def make(n, /):\n    pass\n", "positional-only arguments n"),
    "syntax": ("def make(:\n    pass\n", "SyntaxError at"),
    "missing_import": (
        "import nosuchpackage_xyz\ndef make():\n    pass\n",
        "ModuleNotFoundError: No module named 'nosuchpackage_xyz'",
    ),
    "exit_on_import": ("import sys\nsys.exit(0)\n", "called sys.exit(0)"),
    "exit_in_factory": ("import sys\ndef make():\n    sys.exit(3)\n", "called sys.exit(3)"),
    "bad_system_field": (
        "import chaosgrad\ndef make():\n    return chaosgrad.System("
        "lambda k, t: 0., lambda s, t, k: (s, s), horizon=0)\n",
        "System horizon must be a positive integer",
    ),
    "not_a_system": ("def make():\n    return 3\n", "returned int, not a chaosgrad.System"),
}


@pytest.mark.parametrize("case", sorted(USER_FAILURES))
def test_user_code_failures_are_one_line(case, tmp_path, capsys, monkeypatch):
    src, needle = USER_FAILURES[case]
    (tmp_path / "mysys.py").write_text(src)
    monkeypatch.chdir(tmp_path)
    for spec in (f"{tmp_path / 'mysys.py'}:make", "./mysys.py:make"):
        code, out, err = run(
            ["spectrum", spec, "--steps", "5", "--transient", "0", "--json", "--no-progress"],
            capsys,
        )
        assert_refused(code, err, needle)
        assert "mysys.py" in err and out == ""
        if case not in ("syntax", "missing_import", "exit_on_import"):
            assert "make" in err


def test_user_module_failing_on_import_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "usermod_missing_dep.py").write_text("import nosuchpackage_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run(["spectrum", "usermod_missing_dep:make", "--steps", "5"], capsys)
    assert_refused(code, err, "No module named 'nosuchpackage_xyz'")
    assert "usermod_missing_dep" in err


def test_user_system_by_relative_paths_and_its_prints_go_to_stderr(tmp_path, capsys, monkeypatch):
    here = tmp_path / "work"
    (tmp_path / "x").mkdir()
    here.mkdir()
    (tmp_path / "x" / "mysys.py").write_text(
        "print('hello from the module')\n"
        + _GOOD_FACTORY.replace("    def init", "    print('hello from make')\n    def init")
    )
    monkeypatch.chdir(here)
    code, out, err = run(
        [
            "spectrum",
            "../x/mysys.py:make",
            "--steps",
            "20",
            "--transient",
            "0",
            "--json",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    assert "mine" in str(strict_json(out)["system"])
    assert "hello from the module" in err and "hello from make" in err


def test_default_out_of_a_user_system_stays_under_out(tmp_path, capsys, monkeypatch):
    from chaosgrad.app.cli import default_out

    src = tmp_path / "src" / "mysys.py"
    src.parent.mkdir()
    src.write_text(_GOOD_FACTORY)
    assert default_out("diagnose", f"{src}:make") == os.path.join("out", "diagnose", "mysys_make")
    assert default_out("compare", "../x/y.py:f") == os.path.join("out", "compare", "y_f")
    assert default_out("diagnose", "brax:ant") == os.path.join("out", "diagnose", "brax_ant")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(
        [
            "diagnose",
            f"{src}:make",
            "--horizons",
            "2,4",
            "--seeds",
            "2",
            "--lyapunov-steps",
            "20",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "out" / "diagnose" / "mysys_make" / "report.json").exists()
    assert sorted(p.name for p in src.parent.iterdir()) == ["mysys.py"]


# -- nothing coerced silently ------------------------------------------------------------
def _tiny_system(**fields):
    def init(key, theta):
        return jnp.zeros(2)

    def step(x, theta, key):
        return x * theta, x[0] * theta

    return chaosgrad.System(init, step, theta=jnp.asarray(0.5), **fields)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("horizon", 2.7, "horizon must be a positive integer"),
        ("horizon", True, "horizon must be a positive integer"),
        ("horizon", 0, "horizon must be a positive integer"),
        ("horizon", float("nan"), "horizon must be a positive integer"),
        ("dt", float("inf"), "dt must be a positive finite number"),
        ("dt", float("nan"), "dt must be a positive finite number"),
        ("dt", -0.1, "dt must be a positive finite number"),
    ],
)
def test_system_fields_are_checked_not_coerced(field, value, needle):
    with pytest.raises(InputError, match=needle):
        _tiny_system(**{field: value})


def test_system_horizon_given_as_a_whole_float_is_kept_as_that_integer():
    assert _tiny_system(horizon=3.0).horizon == 3 and isinstance(
        _tiny_system(horizon=3.0).horizon, int
    )


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--param", "n=3", "--param", "eigenvalues=1,2"], "n=3 disagrees with the 2 eigenvalues"),
        (["--param", "eigenvalues=0.5,0.2", "--param", "radius=2"], "not both"),
        (["--param", "radius=-1"], "radius must be a positive finite number"),
        (["--param", "n=2.5"], "linear n must be an integer"),
        (["--param", "seed=-1"], "linear seed must be an integer in 0.."),
        (["--param", "n=1_4"], "digit separators"),
    ],
)
def test_linear_parameters_are_checked(argv, needle, capsys):
    code, out, err = run(
        ["spectrum", "linear", *argv, "--steps", "5", "--transient", "0", "--no-progress"], capsys
    )
    assert_refused(code, err, needle)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["lorenz", "--param", "burn_in=-1"], "lorenz burn_in must be an integer in 0.."),
        (["lorenz", "--param", "dt=1e400"], "not a finite number"),
        (["rnn", "--param", "seed=-1"], "rnn seed must be an integer in 0.."),
        (["heat", "--param", "n=1"], "heat n (grid points) must be an integer in 2.."),
        (["henon", "--param", "a=1_4"], "digit separators"),
        (["henon", "--steps", "1_0"], "expected a positive integer"),
        (["henon", "--transient", "1_0"], "expected an integer >= 0"),
    ],
)
def test_other_parameters_are_checked(argv, needle, capsys):
    code, out, err = run(
        ["spectrum", *argv, "--steps", "5", "--no-progress"]
        if "--steps" not in argv
        else ["spectrum", *argv, "--no-progress"],
        capsys,
    )
    assert_refused(code, err, needle)


def test_grad_growth_digit_separators_refused(capsys):
    code, _, err = run(["grad-growth", "henon", "--horizons", "1_0,20"], capsys)
    assert_refused(code, err, "expected comma-separated positive integers")
    code, _, err = run(["compare", "henon", "--sigma", "1_0"], capsys)
    assert_refused(code, err, "expected a number")


def test_check_system_refuses_complex_states_and_empty_theta():
    def init(key, theta):
        return jnp.zeros(2, jnp.complex64)

    def step(x, theta, key):
        return x * theta, jnp.real(x[0]) * theta

    with pytest.raises(InputError, match="complex state"):
        check_system(chaosgrad.System(init, step, name="cplx", theta=jnp.asarray(0.5)))
    empty = chaosgrad.System(
        lambda k, t: jnp.zeros(2), lambda x, t, k: (x, x[0]), name="empty", theta=jnp.zeros((0,))
    )
    with pytest.raises(InputError, match="no entries"):
        check_system(empty)


@pytest.mark.parametrize("bad", ["ignores", "scales", "good"])
def test_check_system_checks_the_phase_round_trip(bad):
    def init(key, theta):
        return {"x": jnp.array([0.1, 0.2]), "t": jnp.zeros(())}

    def step(s, theta, key):
        x = jnp.stack([1 - theta[0] * s["x"][0] ** 2 + s["x"][1], theta[1] * s["x"][0]])
        return {"x": x, "t": s["t"] + 1}, x[0]

    def with_phase(s, p):
        if bad == "ignores":
            return s
        return {**s, "x": 2 * p if bad == "scales" else p}

    system = chaosgrad.System(
        init,
        step,
        phase=lambda s: s["x"],
        with_phase=with_phase,
        name=f"rt-{bad}",
        theta=jnp.array([1.4, 0.3]),
    )
    if bad == "good":
        check_system(system)
        return
    with pytest.raises(
        InputError, match=f"with_phase of system 'rt-{bad}' is not the inverse of phase"
    ):
        check_system(system)


def test_plot_format_comes_from_the_extension_or_is_refused(tmp_path, capsys):
    base = ["spectrum", "henon", "--steps", "20", "--transient", "0", "--no-progress"]
    code, _, err = run(base + ["--plot", tmp_path / "x.svg"], capsys)
    assert code == 0, err
    assert b"<svg" in (tmp_path / "x.svg").read_bytes()[:2000]
    code, _, err = run(base + ["--plot", tmp_path / "x.pdf"], capsys)
    assert code == 0 and (tmp_path / "x.pdf").read_bytes().startswith(b"%PDF")
    for name in ("x.gif", "x", "x.png.bak"):
        code, _, err = run(base + ["--plot", tmp_path / name], capsys)
        assert_refused(code, err, "accepted: .png, .svg, .pdf")
        assert not (tmp_path / name).exists()
    code, _, err = run(["diagnose", "henon", "--plot", tmp_path / "d.svg"], capsys)
    assert_refused(code, err, "accepted: .png")
    code, _, err = run(base + ["--plot", ""], capsys)
    assert_refused(code, err, "--plot is empty")
    code, _, err = run(["diagnose", "henon", "--out", " "], capsys)
    assert_refused(code, err, "--out is empty")


def test_figures_all_with_names_is_refused(capsys, tmp_path):
    code, _, err = run(["figures", "--all", "nosuch", "--out", tmp_path], capsys)
    assert_refused(code, err, "not both")
    code, _, err = run(["figures", "nosuch", "--out", tmp_path], capsys)
    assert_refused(code, err, "unknown figure 'nosuch'")
    assert list(tmp_path.iterdir()) == []


# -- files -----------------------------------------------------------------------------
def _special_files(tmp_path):
    import socket

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock.png"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    return {"fifo": fifo, "socket": sock_path}, sock


def test_special_files_are_never_replaced(tmp_path, capsys):
    import stat

    from chaosgrad.io import write_bytes

    special, sock = _special_files(tmp_path)
    try:
        for kind, path in special.items():
            mode = os.lstat(path).st_mode
            code, _, err = run(
                [
                    "spectrum",
                    "henon",
                    "--steps",
                    "20",
                    "--transient",
                    "0",
                    "--no-progress",
                    "--plot",
                    path,
                ],
                capsys,
            )
            assert_refused(code, err, f"is a {'FIFO' if kind == 'fifo' else 'socket'}")
            with pytest.raises(InputError, match="writes only regular files"):
                write_bytes(path, b"x")
            assert os.lstat(path).st_mode == mode  # still the FIFO / socket
        code, _, err = run(["diagnose", "henon", "--out", special["fifo"]], capsys)
        assert_refused(code, err, "expected a folder")
        assert stat.S_ISFIFO(os.lstat(special["fifo"]).st_mode)
    finally:
        sock.close()


@pytest.mark.parametrize("damage", ["float_step", "nan_theta", "history_types", "history_not_list"])
def test_crafted_checkpoints_are_refused_with_the_way_out(damage, tmp_path):
    out = tmp_path / "m"
    _meta_api(out, 2)
    ckpt = out / "checkpoint.npz"
    z = dict(np.load(ckpt))
    if damage == "float_step":
        z["step"] = np.asarray(2.7)
    elif damage == "nan_theta":
        z["leaf_0"] = np.full_like(z["leaf_0"], np.nan)
    elif damage == "history_types":
        h = json.loads(str(z["history"]))
        h["records"][0]["loss"] = "x"
        z["history"] = np.asarray(json.dumps(h))
    else:
        z["history"] = np.asarray(json.dumps({"records": 3, "evals": []}))
    np.savez(ckpt, **z)
    with pytest.raises(InputError, match="checkpoint.*--no-resume"):
        _meta_api(out, 4)


def test_damaged_figure_files_name_force_which_recovers(tmp_path, monkeypatch):
    from chaosgrad.app.figures import toy

    monkeypatch.setitem(toy.SIZES, "quick", {"samples": 50, "xs": 5, "ws": 2})
    figures.run_figure("toy", "quick", tmp_path)
    folder = tmp_path / "toy"
    # meta.json damaged: named with --force, and --force recovers
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match="meta.json.*--force"):
        figures.run_figure("toy", "quick", tmp_path)
    figures.run_figure("toy", "quick", tmp_path, force=True)
    # results.npz with other keys or shapes than were saved
    np.savez(folder / "results.npz", wrong=np.zeros(3))
    with pytest.raises(InputError, match="results.npz.*--force"):
        figures.run_figure("toy", "quick", tmp_path)
    figures.run_figure("toy", "quick", tmp_path, force=True)
    # a part with wrong keys or shapes (its digest no longer matches)
    (folder / "results.npz").unlink()
    part = sorted((folder / "parts").glob("*.npz"))[0]
    z = dict(np.load(part))
    first = next(k for k in z if not k.startswith("_"))
    z[first] = np.zeros((7, 7))
    np.savez(part, **z)
    with pytest.raises(InputError, match=f"{part.name}.*--force"):
        figures.run_figure("toy", "quick", tmp_path)
    figures.run_figure("toy", "quick", tmp_path, force=True)
    figures.run_figure("toy", "quick", tmp_path)  # and all is well again


def test_lock_rechecks_the_file_after_locking(tmp_path, monkeypatch):
    # A holder that leaves between our open and our lock unlinks the file: the lock we got
    # is on a file no longer in the folder, so the lock is taken again on the new one.
    import fcntl

    real = fcntl.flock
    calls = []

    def flock(fd, op):
        if not calls:  # the previous holder leaves right now
            os.unlink(tmp_path / ".lock")
        calls.append(fd)
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with OutputLock(tmp_path) as lock:
        assert len(calls) == 2
        assert os.path.samestat(os.fstat(lock.fd), os.stat(tmp_path / ".lock"))


# -- launch failures end in one line, status 3, within --timeout -------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, extra, env_extra=None):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "CHAOSGRAD_"))
    }
    env.update(env_extra or {})
    env.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    cmd = [
        sys.executable,
        "-m",
        "chaosgrad.app.cli",
        "meta-train",
        "linear",
        "--param",
        "n=2",
        "--estimator",
        "backprop",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "m"),
        "--no-progress",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("case", ["peer_never_joins", "coordinator_unreachable"])
def test_launch_failures_are_one_line_and_status_3(case, tmp_path):
    port = _free_port()
    pid = "0" if case == "peer_never_joins" else "1"  # 1: nobody listens on the port
    r = _launch(
        tmp_path,
        [
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            "2",
            "--process-id",
            pid,
            "--timeout",
            "3",
        ],
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 3, r.stderr
    assert len(lines) == 1 and "could not join" in lines[0], r.stderr
    assert f"process {pid} of 2" in lines[0] and "Traceback" not in r.stderr


def test_slurm_variables_without_srun_are_one_line_and_status_3(tmp_path):
    r = _launch(tmp_path, [], {"SLURM_NTASKS": "4", "SLURM_PROCID": "0"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 3, r.stderr
    assert len(lines) == 1 and "not started by srun" in lines[0], r.stderr


# -- generated values that must never be coerced ---------------------------------
@FUZZ
@given(
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(
            lambda v: not (v == v and abs(v) != float("inf") and float(v).is_integer())
        ),
        st.booleans(),
        st.integers(max_value=0),
        st.text(max_size=3),
    )
)
def test_fuzz_system_horizon_is_an_integer_or_refused(value):
    with pytest.raises(InputError, match="horizon must be a positive integer"):
        _tiny_system(horizon=value)


@FUZZ
@given(
    digits=st.integers(min_value=10, max_value=10**6),
    name_key=st.sampled_from(
        [("henon", "a"), ("linear", "n"), ("rnn", "seed"), ("lorenz", "burn_in"), ("logistic", "r")]
    ),
)
def test_fuzz_digit_separators_are_refused_everywhere(digits, name_key, capsys):
    text = str(digits)
    text = text[:1] + "_" + text[1:]
    name, key = name_key
    code, out, err = run(
        ["spectrum", name, "--param", f"{key}={text}", "--steps", "5", "--no-progress"], capsys
    )
    assert_refused(code, err, "digit separators")


def test_one_seed_gives_no_growth_interval_and_no_verdict_from_it(capsys, tmp_path):
    from chaosgrad.gradients import gradient_growth

    g = gradient_growth(systems.make("henon"), horizons=[5, 10, 20], seeds=1, progress=False)
    assert np.isfinite(g.growth_rate)
    for iv in (g.growth_interval, g.variance_rate_interval):
        assert iv.low == -np.inf and iv.high == np.inf  # not a zero-width "95%" interval
    code, out, err = run(
        [
            "diagnose",
            "henon",
            "--seeds",
            "1",
            "--horizons",
            "5,10",
            "--lyapunov-steps",
            "200",
            "--out",
            tmp_path,
            "--json",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    assert strict_json(out)["verdict"] != "chaotic"


def test_a_closed_stdout_is_one_line_not_a_traceback():
    import shlex

    # the shell closes stdout (no preexec_fn: a fork of this multithreaded process)
    r = subprocess.run(
        ["sh", "-c", f"exec {shlex.quote(sys.executable)} -m chaosgrad.app.cli systems --json >&-"],
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "standard output is closed" in lines[0]


def test_code_fingerprint_ignores_the_device_layout():
    # A run may resume on another number of devices or processes: the mesh sizes and device
    # ids in a traced program are not part of its identity (its code is).
    from chaosgrad.estimators.meta import _layout_free

    a = (
        "x = sharding_constraint[sharding=NamedSharding(mesh=Mesh('population': 2, "
        "axis_types=(Auto,)), spec=P('population',))] y  # <function f at 0x7f00ab>"
    )
    b = a.replace("'population': 2", "'population': 8").replace("0x7f00ab", "0x55aa10")
    assert _layout_free(a) == _layout_free(b)
    assert _layout_free(a) != _layout_free(a.replace("spec=P('population',)", "spec=P()"))


@pytest.mark.parametrize(
    "name,params,needle",
    [
        ("influence", {"horizon": 2.7}, "influence_balancing horizon must be an integer"),
        ("linear", {"n": True}, "linear n must be an integer"),
        ("heat", {"n": 3.5}, "heat n (grid points) must be an integer"),
        ("lorenz", {"burn_in": 1.5}, "lorenz burn_in must be an integer"),
        ("lorenz", {"dt": float("inf")}, "lorenz dt must be a positive finite number"),
    ],
)
def test_factories_take_integers_only_where_integers_are_meant(name, params, needle):
    with pytest.raises(InputError) as e:
        systems.make(name, **params)
    assert needle in str(e.value)


def test_phase_round_trip_check_runs_inside_a_jit_trace_too():
    # check_system may first be reached while tracing (a Jacobian inside the user's jit)
    from chaosgrad.jacobian import step_jacobian

    def init(key, theta):
        return {"x": jnp.array([0.1, 0.2]), "t": jnp.zeros(())}

    def step(s, theta, key):
        x = jnp.stack([1 - theta[0] * s["x"][0] ** 2 + s["x"][1], theta[1] * s["x"][0]])
        return {"x": x, "t": s["t"] + 1}, x[0]

    good = chaosgrad.System(
        init,
        step,
        phase=lambda s: s["x"],
        with_phase=lambda s, p: {**s, "x": p},
        name="rt-jit",
        theta=jnp.array([1.4, 0.3]),
    )
    state = init(None, None)
    jac = jax.jit(lambda s: step_jacobian(good, good.theta, jax.random.PRNGKey(0), s, 0))(state)
    assert np.asarray(jac).shape == (2, 2)
    bad = good.replace(with_phase=lambda s, p: s, name="rt-jit-bad")
    with pytest.raises(InputError, match="not the inverse of phase"):
        jax.jit(lambda s: step_jacobian(bad, bad.theta, jax.random.PRNGKey(0), s, 0))(state)
