"""The `chaosgrad` command: systems, spectra, gradient growth, diagnose, compare, meta-train,
figures, the demo. Bad input exits with status 2 and one line naming what was wrong; a
failure inside chaosgrad exits with status 3 and says it is internal.

The argument types live in `chaosgrad.app.cli_types` and the demo in `chaosgrad.app.demo`;
both stay importable from here.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from chaosgrad._version import __version__
from chaosgrad.app.cli_types import (  # noqa: F401 -- re-exported
    MAX_SEED,
    MAX_STEPS,
    _finite_float,
    _int_list,
    _k_arg,
    _nonneg_int,
    _parse_int,
    _positive_int,
    _seed,
)
from chaosgrad.app.demo import cmd_demo
from chaosgrad.app.meta_train import add_launch_arguments, add_meta_train_parser, join_launch
from chaosgrad.app.output import json_output, print_json
from chaosgrad.config import enable_compilation_cache, enable_x64
from chaosgrad.errors import InputError, LaunchError
from chaosgrad.io import PLOT_FORMATS, check_regular, dumps, write_bytes

# Everything that computes (JAX, the systems, the estimators, matplotlib, scipy) is imported
# inside the command that needs it: `chaosgrad --version` and `chaosgrad systems` start in
# well under a second and a half.


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, exit status 2, and takes options only
    by their full names (``--n 64`` is not silently read as ``--no-progress``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        hint = ""
        if message.startswith("unrecognized arguments"):
            tokens = message.split(":", 1)[-1].split()
            if any(t.startswith("-") or "=" in t for t in tokens):
                hint = "; a system's parameters go as --param K=V"
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n")


INTERNAL_ERROR = 3  # exit status of a failure inside chaosgrad (2 is bad input)


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse, before any compute, an output folder that cannot be made or written: a file
    where a folder is expected (there or above), or a folder this user cannot write."""
    if not str(path).strip():
        raise InputError(f"{flag} is empty; give a folder name")
    path = Path(path)
    probe = path
    while not probe.exists():  # the nearest part that exists must be a writable folder
        if probe.parent == probe:
            break
        if probe.is_symlink():  # a dangling link: mkdir would fail on it
            raise InputError(f"{flag} {path}: {probe} is a broken symbolic link")
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{flag} {path}: {probe} is a file, expected a folder")
    if probe.exists():
        _check_writable(probe, f"{flag} {path}")
    return path


def _check_writable(folder: Path, what: str) -> None:
    # Create and remove a file there: os.access says yes to root on read-only file systems
    # and knows nothing of quotas or full disks.
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".chaosgrad-probe-"):
            pass
    except OSError as e:
        raise InputError(
            f"{what}: the folder {folder} is not writable ({e.strerror or e})"
        ) from None


def check_out_file(
    path: str | os.PathLike, flag: str = "--plot", formats: tuple[str, ...] | None = None
) -> Path:
    """Refuse, before any compute, an output file that cannot be written: onto a folder,
    into a missing or unwritable folder, or over a file this user cannot write; onto
    anything but a regular file (a device, FIFO or socket is never replaced); and, given
    ``formats``, a name whose extension is not one of them (the format comes from it)."""
    if not str(path).strip():
        raise InputError(f"{flag} is empty; give a file name")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder, expected a file name")
    check_regular(path, flag)
    if formats is not None and path.suffix.lower().lstrip(".") not in formats:
        raise InputError(
            f"{flag} {path}: the format comes from the extension; accepted: "
            f"{', '.join('.' + f for f in formats)}"
        )
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{flag} {path}: {parent} is a file, expected a folder")
    if not parent.exists():
        raise InputError(f"{flag} {path}: the folder {parent} does not exist")
    _check_writable(parent, f"{flag} {path}")
    return path


def default_out(kind: str, name: str) -> str:
    """``out/KIND/NAME``, with a user's ``path/to/mysys.py:make`` named ``mysys_make``: the
    default folder stays under ./out, never next to the user's source."""
    module, sep, func = name.rpartition(":")
    if sep and (module.endswith(".py") or "/" in module or os.sep in module):
        name = f"{Path(module).stem}_{func}"
    base = name.replace(":", "_").replace("/", "_").replace(os.sep, "_").strip(".")
    return os.path.join("out", kind, base or "system")


def check_outputs(args) -> None:
    """Check every output path of a command (``--out``, ``--plot``) before it computes."""
    if getattr(args, "plot", None) is not None:
        # diagnose and compare copy their saved PNG; the others draw in any format
        copied = args.command in ("diagnose", "compare")
        check_out_file(args.plot, "--plot", ("png",) if copied else PLOT_FORMATS)
    if getattr(args, "out", None) is not None:
        check_out_dir(args.out, "--out")


def _add_system_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "name",
        help="registered system (see `chaosgrad systems`), e.g. henon, "
        "lorenz, rnn, brax:inverted_pendulum, md, lopt; or your own "
        "as module:function or file.py:function",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="system parameter, repeatable (e.g. --param g=2.5)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--x64", action="store_true", help="run in float64")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="FILE", help="write a PNG figure here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `chaosgrad` command."""
    parser = _Parser(
        prog="chaosgrad",
        description="Can gradients through this iterative "
        "system be trusted? Lyapunov spectra, gradient growth and estimators.",
    )
    parser.add_argument("--version", action="version", version=f"chaosgrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("systems", help="list the registered systems and their parameters")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("spectrum", help="Lyapunov spectrum with its convergence")
    _add_system_args(p)
    p.add_argument("--steps", type=_positive_int, default=10_000, help="counted steps")
    p.add_argument(
        "--k", type=_k_arg, default=None, help="number of exponents, or 'all' (default min(n, 8))"
    )
    p.add_argument("--transient", type=_nonneg_int, default=1_000, help="uncounted steps first")

    p = sub.add_parser("grad-growth", help="gradient norm and variance vs horizon")
    _add_system_args(p)
    p.add_argument(
        "--horizons",
        type=_int_list,
        default=[10, 30, 100],
        help="comma-separated unroll lengths (default 10,30,100)",
    )
    p.add_argument("--seeds", type=_positive_int, default=8, help="random starts per horizon")
    p.add_argument(
        "--lyapunov-steps",
        type=_nonneg_int,
        default=0,
        help="also estimate the leading exponent over this many steps from the "
        "start (no transient, like the gradients) to compare (0: skip)",
    )

    p = sub.add_parser(
        "diagnose",
        help="can backprop be trusted? spectrum, gradient growth, "
        "loss slices, verdict; report + figures",
    )
    _add_system_args(p)
    p.add_argument(
        "--horizons",
        type=_int_list,
        default=None,
        help="comma-separated unroll lengths (default H/10,H/3,H of the system)",
    )
    p.add_argument("--seeds", type=_positive_int, default=8, help="random starts per horizon")
    p.add_argument(
        "--lyapunov-steps",
        type=_positive_int,
        default=None,
        help="counted Lyapunov steps (default 20x the longest horizon, >= 2000)",
    )
    p.add_argument(
        "--k", type=_k_arg, default=None, help="number of exponents, or 'all' (default min(n, 8))"
    )
    p.add_argument("--out", default=None, help="report folder (default out/diagnose/NAME)")

    p = sub.add_parser(
        "compare",
        help="which gradient estimator? bias, variance and cost "
        "against a reference gradient, at equal compute",
    )
    _add_system_args(p)
    p.add_argument(
        "--estimators",
        default="backprop,tbptt,es,pes",
        help="comma-separated: registered (backprop, tbptt, es, tes, pes, nres, "
        "combined, reparam) or your own as module:function or "
        "file.py:function (a factory(system, **params) -> Estimator; "
        "compare's settings go to the parameters it names)",
    )
    p.add_argument(
        "--target",
        default="smoothed",
        choices=["smoothed", "exact"],
        help="the gradient every estimator is judged against (default smoothed: "
        "of the Gaussian-smoothed meta-loss, which ES/NRES/PES estimate; "
        "backprop then runs at θ ± σε)",
    )
    p.add_argument(
        "--horizon",
        type=_positive_int,
        default=None,
        help="unroll length T (default: the system's)",
    )
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=16,
        help="independent replicates per estimator, at most (default 16; at "
        "least 8); a truncated estimator's replicate covers a whole inner run",
    )
    p.add_argument(
        "--seconds",
        type=_finite_float,
        default=90.0,
        help="time budget for the sampling after compiling (default 90): half "
        "for the reference, half shared by the estimators; 0: no budget",
    )
    p.add_argument(
        "--budget",
        type=_positive_int,
        default=None,
        help="unroll steps each estimator may spend (default: samples x 8 x T)",
    )
    p.add_argument("--window", type=_positive_int, default=10, help="truncation window K")
    p.add_argument(
        "--sigma",
        type=_finite_float,
        default=0.01,
        help="ES/PES/NRES perturbation scale, and the target's smoothing",
    )
    p.add_argument(
        "--reference",
        default="auto",
        choices=["auto", "reparam", "es", "backprop"],
        help="reference gradient (auto: of the target's unbiased estimators, the "
        "one with the least variance per second, measured)",
    )
    p.add_argument("--out", default=None, help="folder for compare.json and compare.png")
    add_launch_arguments(p, "the estimators and the reference are shared out over the processes")

    p = sub.add_parser(
        "figures",
        help="regenerate the paper's figures (saved results are "
        "reused: an interrupted run resumes)",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="figures to make (see --list)")
    p.add_argument("--all", action="store_true", help="every figure")
    p.add_argument("--list", action="store_true", help="list the figures")
    p.add_argument(
        "--scale",
        default="quick",
        choices=["quick", "paper"],
        help="quick: minutes on a 2-core CPU; paper: the paper's sizes (GPU)",
    )
    p.add_argument("--out", default="figs", help="output folder (default figs)")
    p.add_argument("--force", action="store_true", help="re-run even if results are saved")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_launch_arguments(
        p, "each figure's parts (seeds, shifts, horizons) are split over the processes"
    )

    p = sub.add_parser(
        "demo",
        help="the small default job: spectrum + gradient growth of a "
        "chaotic and a stable RNN, a table and a PNG",
    )
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    add_meta_train_parser(sub)
    return parser


def _make_system(args):
    from chaosgrad import systems
    from chaosgrad.system import check_system

    params = systems.parse_params(args.name, args.param)
    system = systems.make(args.name, **params)
    check_system(system)  # a broken user system fails here, in one line, before any compute
    return system


def _tree_bytes(tree) -> int:
    import jax

    return sum(
        int(math.prod(x.shape)) * x.dtype.itemsize
        for x in jax.tree_util.tree_leaves(tree)
        if hasattr(x, "dtype")
    )


def _check_memory(args, system, *, k: int = 0, seeds: int = 1, horizon: int = 0) -> None:
    """Estimate the memory of the request from the shapes of θ and the state (traced, not
    built) and refuse it with the figure when it cannot fit; warn when it takes over a
    quarter of what is available, so a long run does not start unannounced."""
    import jax

    from chaosgrad.memory import check_fits

    theta_b = _tree_bytes(system.theta)
    state_b = _tree_bytes(jax.eval_shape(system.init, _key(args.seed), system.theta))
    per_run = state_b * (k + 3)  # the state, its tangent vectors and their images
    if horizon:  # unroll_grad: one saved state per chunk, a chunk's activations, a gradient
        chunk = min(horizon, 100)
        per_run += theta_b + state_b * (math.ceil(horizon / chunk) + chunk)
    need = 2 * theta_b + seeds * per_run
    what = f"{args.command} {args.name}" + (f" with {seeds} seeds" if seeds > 1 else "")
    check_fits(need, what)


def _key(seed: int):
    import jax

    return jax.random.PRNGKey(seed)


def _run_record(args) -> dict:
    """The seed and the command's arguments, recorded in a report."""
    skip = {"func"}
    return {
        "seed": args.seed,
        "command": args.command,
        "arguments": {k: v for k, v in vars(args).items() if k not in skip},
    }


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return str(x)
    return f"{x:+.6f}" if abs(x) < 1e4 else f"{x:+.4e}"


def cmd_systems(args) -> int:
    from chaosgrad import systems

    rows = []
    for name in systems.names():
        try:
            rows.append(systems.describe(name))
        except ImportError as e:  # an adapter whose module is not available
            rows.append({"name": name, "description": f"(unavailable: {e})", "params": {}})
    if args.json:
        print_json(dumps(rows))
        return 0
    for r in rows:
        print(f"{r['name']:<10} {r['description']}")
        if r["params"]:
            ps = ", ".join(f"{k}={v!r}" for k, v in r["params"].items())
            print(f"{'':<10}   params: {ps}")
    return 0


def cmd_spectrum(args) -> int:
    from chaosgrad.io import dumps
    from chaosgrad.spectra import lyapunov_spectrum, resolve_k

    system = _make_system(args)
    k = resolve_k(args.k, system.phase_dim(key=_key(args.seed)), args.name, what="--k")
    _check_memory(args, system, k=k)
    res = lyapunov_spectrum(
        system,
        key=_key(args.seed),
        steps=args.steps,
        k=k,
        transient=args.transient,
        progress=False if args.no_progress else None,
    )
    if args.plot:
        from chaosgrad.plots import plot_lyapunov, save

        save(plot_lyapunov(res).figure, args.plot)
    if args.json:
        print_json(dumps(res.to_json()))
        return 0
    print(
        f"{system.description or system.name}  [{res.precision['dtype']}, "
        f"{res.precision['backend']}]"
    )
    print(
        f"Lyapunov spectrum, {res.k} of {res.n} exponents ({res.units}), "
        f"{res.steps} steps after a transient of {res.transient}:"
    )
    marks = [len(res.history_steps) // 4, len(res.history_steps) // 2, -1]
    head = "".join(f"{'@' + str(res.history_steps[m]):>14}" for m in marks)
    print(f"  {'':<5}{'final':>14}{head}")
    for i in range(res.k):
        conv = "".join(f"{_fmt(res.history[m, i]):>14}" for m in marks)
        print(f"  λ{i + 1:<4}{_fmt(res.exponents[i]):>14}{conv}")
    print(f"  sum  {_fmt(float(res.exponents.sum())):>13}")
    if res.nonfinite_step >= 0:
        print(f"  WARNING: the state or its growth went non-finite at step {res.nonfinite_step}")
    print(f"  ({res.seconds:.1f} s)")
    if args.plot:
        print(f"  convergence plot: {args.plot}")
    return 0


def cmd_grad_growth(args) -> int:
    from chaosgrad.gradients import gradient_growth
    from chaosgrad.io import dumps
    from chaosgrad.spectra import lyapunov_spectrum

    system = _make_system(args)
    _check_memory(args, system, seeds=args.seeds, horizon=max(args.horizons))
    lyap = None
    res = gradient_growth(
        system,
        horizons=args.horizons,
        seeds=args.seeds,
        key=_key(args.seed),
        progress=False if args.no_progress else None,
    )
    if args.lyapunov_steps > 0:
        lyap = float(
            lyapunov_spectrum(
                system,
                key=_key(args.seed),
                steps=args.lyapunov_steps,
                k=1,
                transient=0,
                progress=False,
            ).exponents[0]
        )
    if args.plot:
        from chaosgrad.plots import plot_growth, save

        save(plot_growth(res, lyapunov=lyap).figure, args.plot)
    out = res.to_json()
    out["lyapunov_max"] = lyap
    if args.json:
        print_json(dumps(out))
        return 0
    print(f"{system.description or system.name}  [{res.precision['dtype']}]")
    print(f"{'T':>8} {'geomean |g|':>14} {'median |g|':>14} {'variance':>12} {'non-finite':>11}")
    for i, h in enumerate(res.horizons):
        print(
            f"{h:>8} {res.geomean_norm[i]:>14.4e} {res.median_norm[i]:>14.4e} "
            f"{res.variance[i]:>12.4e} {res.nonfinite_fraction[i]:>10.0%}"
        )
    print(
        f"growth rate of |g|: {_fmt(res.growth_rate)} {res.units}; of the variance: "
        f"{_fmt(res.variance_rate)}"
    )
    if lyap is not None:
        print(
            f"leading Lyapunov exponent over the first {args.lyapunov_steps} steps: "
            f"{_fmt(lyap)} {res.units}"
        )
    print(f"({res.seconds:.1f} s)")
    return 0


def _save_and_print(args, result, out: Path, figure: str, text, where: str) -> int:
    """Record the seed and arguments in ``result``'s report, save it (report first, then the
    figures) into ``out``, copy ``figure`` to --plot, and print the JSON or ``text()``."""
    from chaosgrad.io import dumps

    result.run.update(_run_record(args))
    result.save(out)
    if args.plot and figure in result.figures:  # a figure that failed is named in the report
        write_bytes(args.plot, Path(result.figures[figure]).read_bytes())
    if args.json:
        print_json(dumps(result.to_json()))
    else:
        print(text())
        print(where)
    return 0


def cmd_diagnose(args) -> int:
    from chaosgrad.diagnose import diagnose
    from chaosgrad.spectra import resolve_k

    system = _make_system(args)
    out = check_out_dir(args.out or default_out("diagnose", args.name))
    k = resolve_k(args.k, system.phase_dim(key=_key(args.seed)), args.name, what="--k")
    _check_memory(
        args, system, k=k, seeds=args.seeds, horizon=max(args.horizons or [system.horizon])
    )
    d = diagnose(
        system,
        horizons=args.horizons,
        seeds=args.seeds,
        key=_key(args.seed),
        lyapunov_steps=args.lyapunov_steps,
        k=k,
        progress=False if args.no_progress else None,
    )
    return _save_and_print(
        args,
        d,
        out,
        "summary",
        d.summary,
        f"report: {Path(out) / 'report.md'}, {Path(out) / 'report.json'}",
    )


def cmd_compare(args) -> int:
    from chaosgrad.app.compare import compare

    join_launch(args)  # before any computation
    system = _make_system(args)
    if not args.sigma > 0:
        raise InputError(f"--sigma must be positive, got {args.sigma}")
    if args.seconds < 0:
        raise InputError(f"--seconds must be >= 0 (0: no budget), got {args.seconds}")
    names = [n.strip() for n in args.estimators.split(",") if n.strip()]
    out = check_out_dir(args.out or default_out("compare", args.name))
    c = compare(
        system,
        estimators=names,
        target=args.target,
        horizon=args.horizon,
        budget=args.budget,
        samples=args.samples,
        window=args.window,
        sigma=args.sigma,
        seconds=args.seconds if args.seconds > 0 else None,
        reference=args.reference,
        key=_key(args.seed),
        progress=False if args.no_progress else None,
    )
    if c is None:
        return 0  # another process of a launch: process 0 saves and reports
    return _save_and_print(
        args,
        c,
        out,
        "compare",
        c.table,
        f"report: {Path(out) / 'compare.json'}, figure: {Path(out) / 'compare.png'}",
    )


def cmd_figures(args) -> int:
    from chaosgrad.app import figures

    if args.list:
        width = max(map(len, figures.names()))
        for name in figures.names():
            print(f"{name:<{width}}  {figures.FIGURES[name][1]}")
        return 0
    if args.all and args.names:  # "--all nosuch" would silently run every figure
        raise InputError(
            f"give figure names or --all, not both (got --all and "
            f"{', '.join(args.names)}); accepted: {', '.join(figures.names())}"
        )
    todo = figures.names() if args.all else args.names
    if not todo:
        raise InputError(
            "name the figures to make, or pass --all; accepted: " + ", ".join(figures.names())
        )
    for name in todo:
        figures._module(name)  # unknown names fail before any work starts
    join_launch(args)  # before any computation
    enable_x64()
    for name in todo:
        t0 = time.perf_counter()
        png = figures.run_figure(
            name,
            args.scale,
            args.out,
            force=args.force,
            progress=False if args.no_progress else None,
        )
        if png is not None:  # None: another process of a launch; process 0 reports
            print(f"{name:<10} {png}  ({time.perf_counter() - t0:.1f} s)")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"chaosgrad: {category.__name__}: {message}", file=file or sys.stderr)


COMMANDS = {
    "systems": cmd_systems,
    "spectrum": cmd_spectrum,
    "grad-growth": cmd_grad_growth,
    "diagnose": cmd_diagnose,
    "figures": cmd_figures,
    "compare": cmd_compare,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `chaosgrad` command; returns the exit status."""
    if sys.stdout is None:  # started with stdout closed (`chaosgrad ... >&-`)
        if sys.stderr is not None:
            print(
                "chaosgrad: error: standard output is closed; redirect it (e.g. "
                ">/dev/null) instead of closing it",
                file=sys.stderr,
            )
        return 2
    # the command only writes files; never open a window (set before matplotlib loads, so
    # that commands which draw nothing never import it)
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")
    else:
        os.environ["MPLBACKEND"] = "Agg"
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "systems":  # `systems` computes nothing: no JAX at all
        if getattr(args, "x64", False):
            enable_x64()
        enable_compilation_cache()
    handler: Any = COMMANDS.get(args.command) or getattr(args, "func", None)

    def fail(message: object) -> int:
        text = " ".join(str(message).split())  # one line, whatever the message holds
        print(f"chaosgrad {args.command}: error: {text}", file=sys.stderr)
        return 2

    def internal(e: BaseException) -> int:
        # Not bad input: a failure inside chaosgrad (or inside the system's own code). Its
        # own status and words, so a user does not go looking for a mistake in the command.
        import traceback

        if os.environ.get("CHAOSGRAD_TRACEBACK"):
            traceback.print_exception(e, file=sys.stderr)
        text = " ".join(f"{type(e).__name__}: {e}".split())
        print(
            f"chaosgrad {args.command}: internal error (not a problem with the input): "
            f"{text}. Results saved before it are kept; set CHAOSGRAD_TRACEBACK=1 for the "
            "traceback and please report it.",
            file=sys.stderr,
        )
        return INTERNAL_ERROR

    try:
        check_outputs(args)  # a bad --out/--plot fails now, not after minutes of compute
        with warnings.catch_warnings(), json_output(getattr(args, "json", False)):
            warnings.showwarning = _show_warning
            status = int(handler(args) or 0)
        sys.stdout.flush()
        return status
    except InputError as e:
        return fail(e)
    except LaunchError as e:  # a multi-process launch that never formed: status 3
        fail(e)
        return 3
    except KeyboardInterrupt:
        print(f"chaosgrad {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`chaosgrad systems --json | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except MemoryError:
        return fail("out of memory; ask for less (fewer seeds, steps or a smaller system)")
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        return fail(f"{e.strerror or e}{where}")
    except RuntimeError as e:
        # XLA reports a failed device allocation as a RuntimeError (XlaRuntimeError).
        if "RESOURCE_EXHAUSTED" in str(e):
            return fail(
                "out of device memory; ask for less (fewer seeds, steps or a smaller system)"
            )
        # Under a multi-process launch a failed collective means a peer died: stop now with
        # one line rather than wait out the shutdown handshake with the dead peer.
        import jax

        from chaosgrad import distributed

        if isinstance(e, jax.errors.JaxRuntimeError) and distributed.is_initialized():
            distributed.exit_after_peer_failure(
                e,
                f"chaosgrad {args.command}",
                "Run the same command on every process "
                "again to resume (saved checkpoints and figure parts are reused).",
            )
        return internal(e)
    except Exception as e:  # noqa: BLE001 - anything else is ours, never "bad input"
        return internal(e)


if __name__ == "__main__":
    sys.exit(main())
