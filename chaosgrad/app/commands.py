"""The `chaosgrad` command's handlers, one per subcommand (``cmd_<name>(args) -> status``),
and what they share: the system from the command line, the memory estimate, the run record.
Everything that computes is imported inside the handler that needs it."""

from __future__ import annotations

import math
import time
from pathlib import Path

from chaosgrad.app.meta_train import join_launch
from chaosgrad.app.output import check_out_dir, default_out, print_json
from chaosgrad.config import enable_x64
from chaosgrad.errors import InputError
from chaosgrad.io import dumps, write_bytes


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
