"""The `chaosgrad` command's argument parser: every subcommand, its options and their types
(`chaosgrad.app.cli_types`), with usage errors in one line (exit status 2)."""

from __future__ import annotations

import argparse

from chaosgrad._version import __version__
from chaosgrad.app.cli_types import (
    _finite_float,
    _int_list,
    _k_arg,
    _nonneg_int,
    _positive_int,
    _seed,
)
from chaosgrad.app.meta_train import add_launch_arguments, add_meta_train_parser


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
