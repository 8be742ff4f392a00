"""The package's shape: the layer rule, import names, a user's own system on the command line."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import chaosgrad
from chaosgrad import systems
from chaosgrad.app.cli import main
from chaosgrad.errors import InputError, MissingExtra, require

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "chaosgrad"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in ("systems", "estimators"):
        return "top-level " + parts[0]  # never allowed: they install as chaosgrad.*
    if parts[0] != "chaosgrad":
        return None
    if len(parts) > 1 and parts[1] in ("systems", "estimators"):
        return "middle"
    if len(parts) > 1 and parts[1] == "app":
        return "app"
    return "library"


def test_library_never_imports_systems_estimators_or_app():
    bad = []
    for path in LIBRARY.glob("*.py"):
        for mod in _imports(path):
            if _layer(mod) not in (None, "library"):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, bad


def test_middle_never_imports_app_and_nothing_imports_top_level_names():
    bad = []
    for folder in ("systems", "estimators"):
        for path in (ROOT / folder).rglob("*.py"):
            for mod in _imports(path):
                if _layer(mod) in ("app", "top-level systems", "top-level estimators"):
                    bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    for path in list((LIBRARY / "app").rglob("*.py")) + list((ROOT / "tests").glob("*.py")):
        for mod in _imports(path):
            if (_layer(mod) or "").startswith("top-level"):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, bad


def test_layer_checker_sees_a_violation(tmp_path):
    # The checker must be able to fail: a library file importing the middle layer is caught.
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from chaosgrad.estimators import es\n")
    assert {_layer(m) for m in _imports(f)} >= {"middle"}


def test_import_names():
    from chaosgrad import estimators as e
    from chaosgrad import systems as s

    assert s.__name__ == "chaosgrad.systems" and e.__name__ == "chaosgrad.estimators"
    assert "henon" in s.names() and "pes" in e.names()


def test_users_own_systems_and_estimators_modules_break_nothing(tmp_path):
    # A user's working folder with modules named like our middle layer: compare and the
    # registries must still use chaosgrad's own.
    (tmp_path / "systems.py").write_text("raise RuntimeError('user systems.py imported')\n")
    (tmp_path / "estimators.py").write_text("raise RuntimeError('user estimators.py')\n")
    code = (
        "from chaosgrad.app.compare import compare; from chaosgrad import systems; "
        "c = compare(systems.make('logistic', r=3.2), estimators=['backprop'], "
        "horizon=5, samples=8, reference='backprop', reference_batches=8, "
        "reference_per_batch=2); "
        "print(c.ranking)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "backprop" in r.stdout


USER_MODULE = textwrap.dedent("""
    import jax, jax.numpy as jnp
    import chaosgrad

    def make(a: float = 1.4, b: float = 0.3):
        def init(key, theta):
            return jax.random.uniform(key, (2,), minval=-0.1, maxval=0.1)

        def step(x, theta, key):
            x = jnp.stack([1 - theta[0] * x[0] ** 2 + x[1], theta[1] * x[0]])
            return x, chaosgrad.StepOut(loss=x[0])

        return chaosgrad.System(init, step, name="my-henon", theta=jnp.array([a, b]),
                                horizon=20)

    def not_a_system():
        return 3
""")


def test_user_system_by_module_and_by_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "mymod_layers.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    s = systems.make("mymod_layers:make", b=0.2)
    assert s.name == "my-henon" and float(s.theta[1]) == pytest.approx(0.2)
    s2 = systems.make(f"{tmp_path / 'mymod_layers.py'}:make")
    assert float(s2.theta[0]) == pytest.approx(1.4)
    # parameters are typed from the user's own signature; unknown ones are refused
    assert systems.parse_params("mymod_layers:make", ["a=1.2"]) == {"a": 1.2}
    with pytest.raises(InputError, match="no parameter 'c'"):
        systems.make("mymod_layers:make", c=1)
    with pytest.raises(InputError, match="not a chaosgrad.System"):
        systems.make("mymod_layers:not_a_system")
    with pytest.raises(InputError, match="has no function 'nope'"):
        systems.make("mymod_layers:nope")
    with pytest.raises(InputError, match="no module 'nosuchmod_xyz'"):
        systems.make("nosuchmod_xyz:make")
    assert (
        main(
            [
                "spectrum",
                "mymod_layers:make",
                "--steps",
                "2000",
                "--k",
                "2",
                "--json",
                "--no-progress",
                "--x64",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert sum(out["exponents"]) == pytest.approx(float(__import__("math").log(0.3)), abs=1e-6)


def test_cli_diagnose_user_module_outside_the_repository(tmp_path):
    (tmp_path / "mymod.py").write_text(USER_MODULE)
    exe = Path(sys.executable).with_name("chaosgrad")
    env = {**os.environ, "CHAOSGRAD_NO_CACHE": "1"}
    r = subprocess.run(
        [
            str(exe),
            "diagnose",
            "mymod:make",
            "--horizons",
            "5,10,20",
            "--seeds",
            "4",
            "--lyapunov-steps",
            "2000",
            "--no-progress",
            "--out",
            "rep",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["system"]["name"] == "my-henon"
    assert report["verdict"] in ("chaotic", "marginal")


def test_version_and_broken_pipe():
    exe = Path(sys.executable).with_name("chaosgrad")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"chaosgrad {chaosgrad.__version__}"
    r = subprocess.run(
        f"'{exe}' systems --json | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_missing_extra_names_the_extra():
    with pytest.raises(MissingExtra, match=r"pip install 'chaosgrad\[brax\]'"):
        require("no_such_module_for_chaosgrad", "brax")
    assert issubclass(MissingExtra, InputError) and issubclass(MissingExtra, ImportError)


def test_meta_train_takes_the_system_positionally_or_by_alias(tmp_path):
    out = tmp_path / "m"
    common = [
        "--estimator",
        "es",
        "--est-param",
        "pairs=2",
        "--est-param",
        "horizon=5",
        "--steps",
        "2",
        "--log-every",
        "1",
        "--out",
        str(out),
        "--json",
    ]
    assert main(["meta-train", "logistic", *common]) == 0
    assert main(["meta-train", "--system", "logistic", *common]) == 0  # resumes: same run
    assert main(["meta-train", "logistic", "--system", "henon", *common]) == 2


def _fresh(code: str, **env) -> str:
    """Run ``code`` in a fresh interpreter; its stdout."""
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_start_up_imports_nothing_heavy():
    # `import chaosgrad`, `chaosgrad --version` and `chaosgrad systems` load neither JAX nor
    # scipy nor matplotlib: names load on first use (a fast start)
    heavy = "[m for m in ('jax', 'scipy', 'matplotlib', 'optax') if m in sys.modules]"
    assert _fresh(f"import sys, chaosgrad; print({heavy})") == "[]"
    assert (
        _fresh(
            "import sys, contextlib, io\nfrom chaosgrad.app.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['systems']) == 0\nprint({heavy})"
        )
        == "[]"
    )
    assert (
        _fresh(
            "import sys, contextlib, io\nfrom chaosgrad.app.cli import main\n"
            "try:\n    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        main(['--version'])\nexcept SystemExit:\n    pass\n"
            f"print({heavy})"
        )
        == "[]"
    )
    # ... and what `systems` prints is what importing every factory says
    for name in systems.names():
        entry = systems._entry(name)[0]
        import inspect

        params = {
            k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in systems.parameters(name).items()
        }
        assert systems._defaults_from_source(entry) == params, name


def test_compilation_cache_is_on_for_the_python_api(tmp_path):
    code = "import chaosgrad, jax; chaosgrad.System; print(jax.config.jax_compilation_cache_dir)"
    assert _fresh(code, CHAOSGRAD_CACHE_DIR=str(tmp_path)) == str(tmp_path)
    assert _fresh(code, CHAOSGRAD_CACHE_DIR=str(tmp_path), CHAOSGRAD_NO_CACHE="1") == "None"


def test_one_namespace_with_plain_names(tmp_path):
    import math

    from chaosgrad.estimators.meta import meta_train as meta_train_full

    import chaosgrad.diagnose as diagnose_module
    from chaosgrad.app.compare import compare as compare_full

    # chaosgrad.diagnose is the function when called and the module as before
    assert chaosgrad.diagnose is diagnose_module
    assert chaosgrad.diagnose.diagnose is diagnose_module.diagnose
    s = systems.make("linear", eigenvalues=(0.5, 0.2))
    d = chaosgrad.diagnose(s, horizons=[2, 4], seeds=2, lyapunov_steps=200, progress=False)
    assert isinstance(d, chaosgrad.Diagnosis) and d.verdict == "stable"
    # compare with `estimators=` (the full function's `estimators_` stays as it was)
    import inspect

    assert "estimators" in inspect.signature(chaosgrad.compare).parameters
    assert "estimators_" in inspect.signature(compare_full).parameters
    with pytest.raises(InputError, match="estimators="):
        chaosgrad.compare(s, estimators_=["es"])
    # meta_train by names: estimator and outer optimizer
    r = chaosgrad.meta_train(
        systems.make("linear", n=2, radius=0.9, loss="quadratic"),
        "backprop",
        steps=4,
        out=tmp_path / "mt",
        optimizer="sgd",
        outer_lr=0.01,
        estimator_params={"samples": 1, "horizon": 5},
        log_every=2,
        progress=False,
    )
    assert r.step == 4 and math.isfinite(r.evals[-1]["meta_loss"])
    assert meta_train_full is not chaosgrad.meta_train
    with pytest.raises(InputError, match="accepted: adam, sgd"):
        chaosgrad.meta_train(s, "es", optimizer="lbfgs", out=tmp_path / "x")
    assert set(chaosgrad.__all__) >= {"diagnose", "compare", "meta_train", "System", "unroll"}
