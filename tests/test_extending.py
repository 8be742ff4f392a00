"""A user's estimator is as easy to add as a user's system: docs/extending.md's code
blocks, run as written in a folder outside the repository (a sign-compressed ES registered in a
few lines, compared and meta-trained with, from Python and as ``module:function`` on the
command line); every built-in factory's traits; one-line errors for what is not accepted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from chaosgrad.estimators.meta import meta_train

from chaosgrad import estimators, systems, user_code
from chaosgrad.app.cli import main
from chaosgrad.app.compare import compare
from chaosgrad.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
# a code block, with the file it is written to when a `<!-- file: NAME -->` line precedes it
BLOCK = re.compile(r"(?:<!-- file: (\S+) -->\n)?```(\w*)\n(.*?)```", re.S)
KEY = jax.random.PRNGKey(0)


def _blocks() -> list[tuple[str | None, str, str]]:
    return BLOCK.findall(DOC.read_text())


def _write_files(folder: Path) -> None:
    for name, _, body in _blocks():
        if name:
            (folder / name).write_text(body)


def test_every_block_of_the_extending_guide_runs_outside_the_repository(tmp_path):
    blocks = _blocks()
    assert len(blocks) == DOC.read_text().count("```") // 2  # no block escapes the pattern
    assert {lang for _, lang, _ in blocks} == {"python", "bash"}
    _write_files(tmp_path)
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH="",
    )
    # the Python blocks in order, in one process (each is also whole on its own)
    script = "\n".join(body for name, lang, body in blocks if lang == "python" and not name)
    r = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sign_es" in r.stdout and "meta-loss" in r.stdout
    saved = json.loads((tmp_path / "out/mt-sign/results.json").read_text())
    assert saved["estimator"]["name"] == "sign_es"
    assert saved["estimator"]["traits"]["target"] == "none"
    for _, lang, body in blocks:
        if lang != "bash":
            continue
        r = subprocess.run(
            ["bash", "-e", "-c", body],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert r.returncode == 0, (body, r.stderr[-3000:])
    cmp = json.loads((tmp_path / "out/compare-sign/compare.json").read_text())
    by = {e["name"]: e for e in cmp["estimators"]}
    assert set(by) == {"es", "my_estimators:sign_es"}
    assert by["my_estimators:sign_es"]["traits"]["target"] == "none"
    assert by["es"]["traits"] == {
        "target": "smoothed",
        "smoothing": 0.01,
        "correlated": False,
        "windowed": False,
        "reverse_mode": False,
        "steps": 160,
    }
    mt = json.loads((tmp_path / "out/meta-train-sign/results.json").read_text())
    assert mt["steps_done"] == 10 and mt["skipped_steps"] == 0
    assert mt["estimator"]["name"] == "sign_es" and mt["estimator"]["params"]["pairs"] == 4


@pytest.fixture
def sign_es(tmp_path):
    """The guide's sign-ES, loaded from the guide's own block and registered in one line
    (the registry is restored afterwards)."""
    _write_files(tmp_path)
    factory = user_code.load_factory(f"{tmp_path / 'my_estimators.py'}:sign_es", "estimator")
    before = dict(estimators._REGISTRY)
    estimators.register("sign_es", factory)
    yield factory
    estimators._REGISTRY.clear()
    estimators._REGISTRY.update(before)


def test_a_registered_estimator_is_one_like_the_others(sign_es, tmp_path):
    assert "sign_es" in estimators.names()
    # as systems.register takes "module:function", loaded only when the estimator is made
    estimators.register("sign_es_file", f"{tmp_path / 'my_estimators.py'}:sign_es")
    assert estimators.make("sign_es_file", systems.make("henon")).target == "none"
    for bad in (("a:b", sign_es), ("x", 3), ("", sign_es)):
        with pytest.raises(InputError, match="name must be|factory must be"):
            estimators.register(*bad)
    d = estimators.describe("sign_es")
    assert d["params"] == {"pairs": 8, "sigma": 0.01, "horizon": 0, "clip_norm": 0.0}
    assert d["description"].startswith("ES compressed to scaled signs")
    assert estimators.parse_params("sign_es", ["pairs=4", "sigma=0.1"]) == {
        "pairs": 4,
        "sigma": 0.1,
    }
    henon = systems.make("henon")
    est = estimators.make("sign_es", henon, pairs=4, horizon=10, clip_norm=1.0)
    assert est.name == "sign_es" and est.target == "none" and est.smoothing == 0.01
    assert est.steps == 2 * 4 * 10 and not est.correlated and not est.windowed
    grad, _, info = jax.jit(est.estimate)(est.init(KEY, henon.theta), henon.theta, KEY)
    assert set(estimators.INFO_KEYS) <= set(info) and int(info["steps"]) == 80
    g = abs(jax.numpy.asarray(grad))  # scaled signs: one magnitude for every coordinate
    assert float(g[0]) == pytest.approx(float(g[1]))


def test_compare_and_meta_train_read_traits_not_names(sign_es, tmp_path):
    henon = systems.make("henon")
    # a correlated, windowed user estimator named like nothing built in: compare averages
    # ceil(T / K) successive estimates per replicate because of its traits
    pes = estimators.make("pes", henon, pairs=2, window=5, horizon=10)._replace(name="mine")
    exact = estimators.make("backprop", henon, samples=2, horizon=10)._replace(name="bp")
    c = compare(
        henon, estimators=["sign_es", pes, exact], horizon=10, samples=8, key=KEY, progress=False
    )
    by = {s.name: s for s in c.stats}
    assert by["mine"].per_replicate == 2 and by["sign_es"].per_replicate == 1
    assert by["mine"].traits["windowed"] and by["sign_es"].traits["target"] == "none"
    assert by["bp"].estimator == "bp"  # an object runs as built (no reparam swap by name)
    assert any(
        n.startswith("the target is the smoothed gradient: bp estimates the exact") for n in c.notes
    )
    with pytest.raises(InputError, match="'mine' was given as an Estimator object"):
        compare(henon, estimators=[pes], horizon=10, params={"mine": {"pairs": 4}})
    r = meta_train(
        henon,
        estimators.make("sign_es", henon, pairs=2, horizon=10),
        __import__("optax").sgd(1e-3),
        3,
        tmp_path / "mt",
        KEY,
        progress=False,
    )
    assert r.step == 3
    saved = json.loads((tmp_path / "mt" / "results.json").read_text())
    assert saved["estimator"]["traits"]["target"] == "none"
    # the windowed trait: its own window must fit in the horizon
    long = estimators.make("pes", henon, pairs=2, window=30, horizon=10)._replace(name="w")
    with pytest.raises(InputError, match="window 30 of w must be between 1 and the horizon"):
        compare(henon, estimators=[long], horizon=10, samples=8, key=KEY, progress=False)


def test_every_builtin_factory_states_its_traits():
    s = systems.make("logistic")
    expect = {  # target, smoothed, correlated, windowed, reverse mode
        "backprop": ("exact", False, False, False, True),
        "tbptt": ("truncated", False, True, True, True),
        "es": ("smoothed", True, False, False, False),
        "tes": ("truncated", True, True, True, False),
        "pes": ("smoothed per truncation", True, True, True, False),
        "nres": ("smoothed", True, True, True, False),
        "reparam": ("smoothed", True, False, False, True),
        "combined": ("smoothed", True, False, False, True),
    }
    assert set(expect) == set(estimators.names())
    for name, (target, smoothed, correlated, windowed, reverse) in expect.items():
        est = estimators.check_estimator(estimators.make(name, s, horizon=20))
        assert est.target == target and (est.smoothing == 0.01) == smoothed, name
        assert (est.correlated, est.windowed, est.reverse_mode) == (
            correlated,
            windowed,
            reverse,
        ), name
        _, _, info = jax.jit(est.estimate)(est.init(KEY, s.theta), s.theta, KEY)
        assert int(info["steps"]) == est.steps, name  # the trait is what an estimate runs
        assert set(estimators.INFO_KEYS) <= set(info), name


def test_unknown_or_broken_estimators_are_one_line_input_errors(
    sign_es, tmp_path, monkeypatch, capsys
):
    henon = systems.make("henon")
    accepted = (
        "accepted: backprop, combined, es, nres, pes, reparam, sign_es, tbptt, tes, "
        "or module:function for your own"
    )
    for call in (
        lambda: estimators.make("nosuch", henon),
        lambda: estimators.describe("nosuch"),
        lambda: estimators.parse_params("nosuch", []),
        lambda: compare(henon, estimators=["es", "nosuch"], horizon=10),
    ):
        with pytest.raises(InputError) as e:
            call()
        assert str(e.value) == f"unknown estimator 'nosuch'; {accepted}"
    assert main(["meta-train", "henon", "--estimator", "nosuch", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown estimator 'nosuch'" in err and len(err.splitlines()) == 1
    # a user's file: an info without the required keys, a factory returning something else,
    # a factory that fails, a trait of the wrong kind
    (tmp_path / "bad.py").write_text(
        "from chaosgrad import estimators\n"
        "def no_info(system, pairs: int = 2):\n"
        "    es = estimators.es(system, pairs=pairs, horizon=5)\n"
        "    def estimate(state, theta, key):\n"
        "        grad, state, info = es.estimate(state, theta, key)\n"
        "        return grad, state, {'loss': info['loss']}\n"
        "    return es._replace(estimate=estimate, name='no_info')\n"
        "def not_one(system):\n"
        "    return 'an estimator'\n"
        "def fails(system):\n"
        "    raise RuntimeError('no luck')\n"
        "def odd_target(system):\n"
        "    return estimators.es(system)._replace(target='wobbly')\n"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="'no_info': its info lacks steps, nonfinite_losses"):
        compare(henon, estimators=["bad:no_info"], horizon=5, samples=8, key=KEY, progress=False)
    with pytest.raises(InputError, match="its info lacks steps"):
        meta_train(
            henon,
            estimators.make("bad:no_info", henon),
            __import__("optax").sgd(1e-3),
            2,
            tmp_path / "mt",
            KEY,
            progress=False,
        )
    with pytest.raises(InputError, match="is a str, not a chaosgrad.estimators.Estimator"):
        estimators.make("bad:not_one", henon)
    with pytest.raises(
        InputError,
        match=r"'bad:fails': building it raised RuntimeError: no "
        r"luck \(at .*bad.py line 11, in fails\)",
    ):
        estimators.make("bad:fails", henon)
    with pytest.raises(InputError, match="target 'wobbly' is not accepted; accepted: exact"):
        estimators.make("bad:odd_target", henon)
    with pytest.raises(InputError, match="named more than once"):
        compare(henon, estimators=["sign_es", sign_es(henon)], horizon=5)
