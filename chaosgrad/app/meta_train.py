"""The ``chaosgrad meta-train`` subcommand: its parser and its runner.

`add_meta_train_parser(subparsers)` adds it; `run_meta_train(args)` runs it (exit status).
`add_launch_arguments(parser)` and `join_launch(args)` give a subcommand the multi-process
launch options (meta-train and figures use them).
"""

from __future__ import annotations

import sys

from chaosgrad.app.output import print_json
from chaosgrad.checks import check_number, check_positive_int
from chaosgrad.config import LAUNCH_TIMEOUT
from chaosgrad.errors import InputError

# JAX, optax, the systems and the estimators are imported when the command runs, not when
# its parser is built (`chaosgrad --version` must not pay for them).


def add_meta_train_parser(subparsers):
    """Add the ``meta-train`` subcommand to an argparse ``subparsers`` object; returns it."""
    from chaosgrad.app.cli_types import _finite_float, _positive_int, _seed

    p = subparsers.add_parser(
        "meta-train",
        help="train a system's theta with a gradient estimator (e.g. PES on a learned optimizer)",
        description="Meta-train theta with any estimator and an optax optimizer; writes log.jsonl, "
        "results.json, curves.npz, theta.npz and checkpoint.npz to --out, and "
        "resumes from the checkpoint when run again with the same settings.",
    )
    p.add_argument(
        "name",
        nargs="?",
        default=None,
        help="registered system (e.g. lopt, rnn) or module:function",
    )
    p.add_argument("--system", default=None, help="the same as the positional name (alias)")
    p.add_argument(
        "--param", action="append", default=[], metavar="K=V", help="system parameter (repeatable)"
    )
    p.add_argument(
        "--estimator",
        default="pes",
        help="a registered estimator (backprop, tbptt, es, tes, pes, nres, reparam, "
        "combined; default pes) or your own as module:function or "
        "file.py:function (a factory(system, **params) -> Estimator)",
    )
    p.add_argument(
        "--est-param",
        action="append",
        default=[],
        metavar="K=V",
        help="estimator parameter (repeatable), e.g. pairs=8 sigma=0.01 window=10",
    )
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=100,
        help="total outer steps (default 100); a larger number extends a run",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--outer-lr",
        "--lr",
        dest="lr",
        type=_finite_float,
        default=1e-3,
        help="the outer optimizer's learning rate (default 1e-3; --lr is the old "
        "name); a system's own learning rate goes as --param",
    )
    p.add_argument(
        "--outer-optimizer",
        default="adam",
        metavar="NAME",
        help="the outer optimizer: adam, sgd, momentum (SGD with 0.9), adamw or "
        "rmsprop (default adam)",
    )
    p.add_argument(
        "--horizon",
        type=_positive_int,
        default=None,
        help="unroll length T of the meta-loss (default: the system's); passed to "
        "the estimator too unless --est-param horizon=... is given",
    )
    p.add_argument("--x64", action="store_true", help="run in float64")
    p.add_argument("--seed", type=_seed, default=0, help="run seed (default 0)")
    p.add_argument("--log-every", type=_positive_int, default=10, help="evaluate every N steps")
    p.add_argument(
        "--checkpoint-every", type=_positive_int, default=50, help="checkpoint every N steps"
    )
    p.add_argument(
        "--eval-seeds", type=_positive_int, default=4, help="fixed unrolls for the meta-loss"
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over: delete an existing checkpoint in --out",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_launch_arguments(p, "the population is split over every process's devices")
    p.set_defaults(func=run_meta_train)
    return p


def add_launch_arguments(p, what: str):
    """Add --coordinator, --num-processes, --process-id and --timeout to parser ``p``
    (``what``: what is split over the processes, for the help)."""
    from chaosgrad.app.cli_types import _positive_int

    g = p.add_argument_group(
        "multi-process launch",
        f"Run one such command per process (or under srun / mpirun, which need none of "
        f"these): {what}, and process 0 writes --out. Each defaults to its CHAOSGRAD_* "
        "environment variable.",
    )
    g.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="address of process 0's coordinator (CHAOSGRAD_COORDINATOR)",
    )
    g.add_argument(
        "--num-processes",
        default=None,
        metavar="P",
        help="how many processes take part (CHAOSGRAD_NUM_PROCESSES)",
    )
    g.add_argument(
        "--process-id",
        default=None,
        metavar="I",
        help="this process's index, 0 to P-1 (CHAOSGRAD_PROCESS_ID)",
    )
    g.add_argument(
        "--timeout",
        type=_positive_int,
        default=None,
        metavar="S",
        help="seconds to wait for every process to join, and after which a silent "
        f"process counts as dead (CHAOSGRAD_TIMEOUT, default "
        f"{LAUNCH_TIMEOUT})",
    )


def join_launch(args):
    """Join the launch that ``args`` (or the environment) describe, before any computation;
    returns the `chaosgrad.distributed.Launch`, or None for a single process."""
    from chaosgrad import distributed

    return distributed.initialize(
        getattr(args, "coordinator", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
        timeout=getattr(args, "timeout", None),
    )


def run_meta_train(args) -> int:
    """Run ``meta-train`` from parsed ``args``. Returns 0, or 130 when interrupted (the
    checkpoint is written; run the same command again to resume). Raises InputError for
    bad input."""
    import jax

    from chaosgrad import distributed, estimators, systems
    from chaosgrad.estimators.meta import meta_train
    from chaosgrad.io import dumps

    if args.name and args.system and args.name != args.system:
        raise InputError(f"two systems named: {args.name!r} and --system {args.system!r}")
    args.name = args.name or args.system
    if not args.name:
        raise InputError("name the system to meta-train, e.g. `chaosgrad meta-train lopt ...`")
    check_number(args.lr, "--lr", positive=True)
    check_positive_int(args.steps, "--steps")
    # Before any computation: joining a launch must precede JAX's first use of devices.
    from chaosgrad.app.api import outer_optimizer

    name = getattr(args, "outer_optimizer", "adam")
    opt = outer_optimizer(name, args.lr)  # an unknown name fails before any work
    launch = join_launch(args)
    system = systems.make(args.name, **systems.parse_params(args.name, args.param))
    est_params = estimators.parse_params(args.estimator, args.est_param)
    horizon = getattr(args, "horizon", None)
    if horizon is not None:
        system = system.replace(horizon=int(horizon))
        if "horizon" in estimators.parameters(args.estimator) and "horizon" not in est_params:
            est_params["horizon"] = int(horizon)
    est = estimators.make(args.estimator, system, **est_params)
    try:
        result = meta_train(
            system,
            est,
            opt,
            args.steps,
            args.out,
            jax.random.PRNGKey(args.seed),
            log_every=args.log_every,
            checkpoint_every=args.checkpoint_every,
            eval_seeds=args.eval_seeds,
            resume=not args.no_resume,
            outer_config={"optimizer": name, "lr": args.lr},
            progress=False if getattr(args, "no_progress", False) else None,
        )
    except jax.errors.JaxRuntimeError as e:
        if launch is None:
            raise
        distributed.exit_after_peer_failure(
            e,
            "chaosgrad meta-train",
            f"The last checkpoint in {args.out} is whole: run the same command on every "
            "process again to resume from it.",
        )
    summary = {
        "system": system.name,
        "estimator": est.name,
        "params": est.params,
        "steps_done": result.step,
        "interrupted": result.interrupted,
        "initial_meta_loss": result.evals[0]["meta_loss"],
        "final_meta_loss": result.evals[-1]["meta_loss"],
        "skipped_steps": int(sum(result.history["skipped"])),
        "out": str(result.out_dir),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
    }
    if launch is not None and not distributed.is_main_process():
        return 130 if result.interrupted else 0  # process 0 reports for the run
    if args.json:
        print_json(dumps(summary, indent=None))
    else:
        state = "interrupted at" if result.interrupted else "done:"
        print(
            f"meta-train {est.name} on {system.name} {state} step {result.step}: meta-loss "
            f"{summary['initial_meta_loss']:.6g} -> {summary['final_meta_loss']:.6g} "
            f"({summary['skipped_steps']} non-finite steps skipped); results in {args.out}",
            file=sys.stdout,
        )
    return 130 if result.interrupted else 0
