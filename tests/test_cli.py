"""The `chaosgrad` command: JSON and tables, plots, and one-line errors with exit status 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from chaosgrad import systems
from chaosgrad.app.cli import main


def test_spectrum_json_for_henon(capsys):
    assert (
        main(
            [
                "spectrum",
                "henon",
                "--steps",
                "100000",
                "--k",
                "2",
                "--x64",
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["system"] == "henon" and out["steps"] == 100000 and out["dt"] is None
    assert out["exponents"][0] == pytest.approx(0.420, abs=0.005)
    assert sum(out["exponents"]) == pytest.approx(np.log(0.3), abs=1e-6)


def test_spectrum_table_and_plot(tmp_path, capsys):
    png = tmp_path / "conv.png"
    assert main(["spectrum", "lorenz", "--steps", "3000", "--x64", "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "per unit time" in text and "λ3" in text
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grad_growth_json(capsys):
    assert (
        main(
            [
                "grad-growth",
                "rnn",
                "--param",
                "n=8",
                "--param",
                "g=0.5",
                "--horizons",
                "5,10,20",
                "--seeds",
                "3",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["horizons"] == [5, 10, 20] and out["seeds"] == 3
    assert out["system_meta"]["g"] == 0.5
    assert all(f == 0.0 for f in out["nonfinite_fraction"])


def test_systems_lists_the_oracles(capsys):
    assert main(["systems", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"logistic", "henon", "lorenz", "linear", "rnn"} <= set(rows)
    assert rows["rnn"]["params"]["g"] == 2.0


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["spectrum", "nosuch"], "unknown system 'nosuch'; accepted:"),
        (
            ["spectrum", "henon", "--k", "3"],
            "--k must be an integer between 1 and the phase dimension 2 of 'henon', "
            "or 'all'; got 3",
        ),
        (
            ["diagnose", "henon", "--k", "3"],
            "--k must be an integer between 1 and the phase dimension 2 of 'henon', "
            "or 'all'; got 3",
        ),
        (["spectrum", "henon", "--steps", "0"], "expected a positive integer, got '0'"),
        (["spectrum", "henon", "--param", "c=1"], "no parameter 'c'; accepted: a, b, dtype"),
        (["spectrum", "henon", "--param", "a=x"], "cannot read 'x' as float"),
        (["grad-growth", "rnn", "--horizons", "10,-3"], "comma-separated positive integers"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_console_script_exit_status_without_traceback():
    env = {**os.environ, "CHAOSGRAD_NO_CACHE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "chaosgrad.app.cli", "spectrum", "logistic", "--k", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert "phase dimension 1" in p.stderr


def test_parse_params_types():
    assert systems.parse_params("linear", ["n=3", "eigenvalues=1.5,0.2", "radius=2"]) == {
        "n": 3,
        "eigenvalues": (1.5, 0.2),
        "radius": 2.0,
    }


def test_meta_train_takes_x64_horizon_and_an_outer_optimizer(tmp_path, capsys):
    out = tmp_path / "mt"
    assert (
        main(
            [
                "meta-train",
                "linear",
                "--param",
                "n=3",
                "--param",
                "radius=0.95",
                "--param",
                "loss=quadratic",
                "--estimator",
                "backprop",
                "--est-param",
                "samples=2",
                "--horizon",
                "20",
                "--outer-optimizer",
                "momentum",
                "--outer-lr",
                "0.02",
                "--x64",
                "--steps",
                "10",
                "--log-every",
                "5",
                "--out",
                str(out),
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert res["estimator"]["params"]["horizon"] == 20  # --horizon reached the estimator
    assert res["system"]["horizon"] == 20
    assert res["precision"]["x64"] is True
    assert res["final_meta_loss"] < res["initial_meta_loss"]
    # θ by plain names: per evaluation in log.jsonl and curves.npz, and in theta.npz
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    with np.load(out / "theta.npz") as z:
        final = {k: z[k] for k in z.files}
    with np.load(out / "curves.npz") as z:
        per_eval = {k: z[k] for k in z.files if k.startswith("theta/")}
    assert set(log[-1]["theta"]) == set(final) and len(final) >= 1
    for name, value in final.items():
        np.testing.assert_allclose(log[-1]["theta"][name], value, rtol=1e-12)
        assert per_eval[f"theta/{name}"].shape == (len(log), *value.shape)
        np.testing.assert_allclose(per_eval[f"theta/{name}"][-1], value, rtol=1e-12)
    assert log[0]["theta"] != log[-1]["theta"]  # θ moved
    capsys.readouterr()
    # an unknown outer optimizer: bad input, one line naming the accepted ones
    assert (
        main(["meta-train", "linear", "--outer-optimizer", "lbfgs", "--out", str(tmp_path / "x")])
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown outer optimizer 'lbfgs'; accepted: adam, sgd, momentum" in err
    assert len(err.strip().splitlines()) == 1


def test_named_leaves_gives_plain_pytree_paths():
    # for theta.npz and logs a user reads: "log_lr", not "['log_lr']"
    from chaosgrad.io import named_leaves

    out = named_leaves({"log_lr": np.float64(-2.3), "net": [{"w": np.ones(2)}, (np.zeros(1),)]})
    assert sorted(out) == ["log_lr", "net/0/w", "net/1/0"]
    assert out["log_lr"] == -2.3 and out["net/0/w"].shape == (2,)
    assert list(named_leaves(np.ones(3))) == ["theta"]
