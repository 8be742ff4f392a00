"""Meta-training's loop: fit a system's θ with any estimator and an optax optimizer, with
logs, atomic checkpoints (`chaosgrad.estimators.checkpoint`), exact resumption after an
interruption, and a progress bar — in one process or across the processes of a
`chaosgrad.distributed` launch (process 0 writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from chaosgrad.estimators.base import Estimator, check_estimator, check_info, count_nonfinite
from chaosgrad.estimators.checkpoint import (
    CHECKPOINT,
    CURVES,
    LOG,
    RESULTS,
    STEP_FIELDS,
    THETA,
    OutputLock,
    _code_fingerprint,
    _fingerprint,
    _restore_checkpoint,
)

from chaosgrad import distributed
from chaosgrad._types import PyTree
from chaosgrad.checks import check_positive_int
from chaosgrad.compile_cache import _function_key, _Same, _Uncacheable, cache_by_functions
from chaosgrad.config import precision_info
from chaosgrad.errors import InputError
from chaosgrad.io import (
    dumps,
    named_leaves,
    save_npz,
    write_text,
)
from chaosgrad.progress import progress_bar
from chaosgrad.system import System, resolve_theta
from chaosgrad.unroll import unrolled_loss


class MetaTrainResult(NamedTuple):
    """What `meta_train` returns.

    Attributes:
      theta: the trained parameters.
      step: how many outer steps are done (== ``steps`` unless interrupted).
      history: per outer step, the estimator's statistics (dict of lists, one entry per
        step: loss, grad_norm, nonfinite_grad, nonfinite_losses, skipped).
      evals: the fixed-seed evaluations: a list of {"step", "meta_loss", "nonfinite"} with
        θ at that step ("theta", by plain names, when it has at most `THETA_LOG_MAX` numbers;
        else "theta_norm").
      interrupted: True when a KeyboardInterrupt stopped it (a checkpoint was written).
      out_dir: where the files are.
    """

    theta: PyTree
    step: int
    history: dict
    evals: list
    interrupted: bool
    out_dir: Path


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where training is, so it checkpoints like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise _Terminated()


# Compiled programs shared by consecutive runs: a run's keys are arguments, not constants, so
# a second run (another key, another θ0) with the same estimator and outer optimizer on a
# system that computes the same (`chaosgrad.compile_cache.compile_key`: a notebook cell
# re-run with a changed global compiles afresh) reuses the first run's program instead of
# tracing and compiling its own. One entry each: all that consecutive runs of one
# configuration reuse. Each compiled program stays loaded while cached, and a large one holds
# thousands of memory mappings (the learned-optimizer family's outer step and evaluator:
# about 6,000); with 16 cached the `lopt_generalization` study passed Linux's default limit of
# 65,530 mappings per process and LLVM failed to allocate ("Cannot allocate memory").
@cache_by_functions(maxsize=1)
def _jit_evaluate(system: System, horizon: int):
    def evaluate(theta, keys):
        vals = jax.vmap(lambda k: unrolled_loss(system, theta, k, horizon))(keys)
        return jnp.mean(vals), vals

    return jax.jit(evaluate)


def make_evaluator(system: System, seeds: int, horizon: int, key: jax.Array):
    """A jitted ``theta -> (mean meta-loss, per-seed meta-losses)`` over a fixed set of
    ``seeds`` full ``horizon``-step unrolls (run keys ``split(key, seeds)``). Evaluators of
    one system and horizon share one compiled program whatever their key."""
    keys = jax.random.split(key, seeds)
    program = _jit_evaluate(system, horizon)
    return lambda theta: program(theta, keys)


@cache_by_functions(maxsize=1)
def _jit_train_step(system: System, estimator: _Same, outer_optimizer: _Same, outer_code):
    """The jitted outer step ``(θ, opt_state, est_state, i, k_train) -> (θ, opt_state,
    est_state, info, finite)`` of the estimator and outer optimizer (held by identity;
    ``outer_code`` keys what the optimizer's update computes, globals included)."""
    import optax

    est, opt = estimator.obj, outer_optimizer.obj

    def train_step(theta, opt_state, est_state, i, k_train):
        grad, est_state, info = est.estimate(est_state, theta, jax.random.fold_in(k_train, i))
        check_info(info, est.name)  # at trace time: before any step runs
        finite = count_nonfinite(grad) == 0
        updates, new_opt = opt.update(grad, opt_state, theta)
        new_theta = optax.apply_updates(theta, updates)
        keep = jax.tree_util.tree_map
        theta = keep(lambda a, b: jnp.where(finite, a, b), new_theta, theta)
        opt_state = keep(lambda a, b: jnp.where(finite, a, b), new_opt, opt_state)
        return theta, opt_state, est_state, info, finite

    return jax.jit(train_step)


def _train_step(system: System, estimator: Estimator, outer_optimizer):
    """`_jit_train_step` for this run: shared by every run with the same objects on a system
    that computes the same, built for this call alone when the optimizer's update cannot be
    keyed safely."""
    try:
        outer_code = _function_key(outer_optimizer.update)
    except _Uncacheable:
        return _jit_train_step.__wrapped__(system, _Same(estimator), _Same(outer_optimizer), None)
    return _jit_train_step(system, _Same(estimator), _Same(outer_optimizer), outer_code)


def meta_train(
    system: System,
    estimator: Estimator,
    outer_optimizer,
    steps: int,
    out_dir: str | os.PathLike,
    key: jax.Array,
    theta0: PyTree = None,
    *,
    log_every: int = 10,
    checkpoint_every: int = 100,
    eval_seeds: int = 4,
    eval_horizon: int = 0,
    progress: bool | None = None,
    callback=None,
    resume: bool = True,
    outer_config: dict | None = None,
) -> MetaTrainResult:
    """Train θ for ``steps`` outer steps: θ ← optax update of ``estimator``'s gradient.

    Outer step i (1-based) uses the estimate key ``fold_in(k_train, i)``, so a run resumed
    from a checkpoint replays exactly the steps an uninterrupted run would have taken. A
    step whose gradient has a NaN/Inf entry is not applied (θ and the optimizer state are
    kept) and is counted in ``skipped``; nothing is zeroed.

    Args:
      system: the system whose meta-loss is trained.
      estimator: any `Estimator` built for ``system``.
      outer_optimizer: an ``optax.GradientTransformation``.
      steps: total outer steps (a resumed run continues up to this number).
      out_dir: folder for ``checkpoint.npz``, ``log.jsonl``, ``results.json``,
        ``curves.npz``, ``theta.npz``; all written atomically (temp file + os.replace).
      key: the run's key; split into the estimator-init, training and evaluation keys.
      theta0: initial θ (default: the system's theta).
      log_every: evaluate and log every this many steps (and at the first and last).
      checkpoint_every: checkpoint every this many steps (and at the end or on interrupt).
      eval_seeds: number of fixed full unrolls the meta-loss is evaluated on.
      eval_horizon: their length (0: the system's horizon).
      progress: show a tqdm bar (None: when stderr is a terminal).
      callback: optional ``callback(step, record)`` called after every step (a
        KeyboardInterrupt raised in it stops training like Ctrl-C).
      resume: continue from ``out_dir/checkpoint.npz`` when it exists. It must come from
        the same run: system, estimator and parameters, θ0, key, ``outer_config``,
        ``log_every``, ``eval_seeds`` and ``eval_horizon``; a mismatch is an InputError
        naming the fields. ``steps`` may grow (the run is extended), not shrink below the
        steps already done. False: delete the checkpoint and start over.
      outer_config: what the outer optimizer is (e.g. ``{"optimizer": "adam", "lr": 1e-3}``;
        an optax transformation cannot be compared), so a resume with another is refused.
        None: only the layout of the optimizer's state is compared (Adam vs SGD, not the
        learning rate).

    A ``.lock`` file in ``out_dir`` keeps a second run from writing into the same folder.
    SIGTERM (in the main thread) stops training like Ctrl-C: the checkpoint is written.

    Under a multi-process launch (`chaosgrad.distributed.initialize` called first) every
    process runs this with the same arguments: the population is split over every
    process's devices; only process 0 takes the lock, reads the checkpoint (and sends it
    to the others, so no shared file system is needed) and writes files. A stop (SIGINT,
    SIGTERM, or a callback's KeyboardInterrupt) on any process is agreed on at the end of
    the step, so every process stops after the same step and the checkpoint is whole.

    Returns:
      A `MetaTrainResult`.
    """
    check_estimator(estimator)
    steps = check_positive_int(steps)
    log_every = check_positive_int(log_every, "log_every")
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    eval_seeds = check_positive_int(eval_seeds, "eval_seeds")
    horizon = check_positive_int(eval_horizon or system.horizon, "eval_horizon")
    theta0 = resolve_theta(system, theta0)
    out = Path(out_dir)
    # Only process 0 touches the folder. Whether it could is sent to every process, so a
    # refusal (a folder in use) stops them all with the same message.
    lock: contextlib.nullcontext[None] | OutputLock
    error, lock = "", contextlib.nullcontext()
    if distributed.is_main_process():
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = OutputLock(out)
            lock.__enter__()
        except (InputError, OSError) as e:
            error = str(e) or type(e).__name__
            lock = contextlib.nullcontext()
    error = distributed.broadcast_text(error)
    if error:
        raise InputError(error)
    with contextlib.ExitStack() as stack:
        stack.push(lock)
        return _meta_train(
            system,
            estimator,
            outer_optimizer,
            steps,
            out,
            key,
            theta0,
            log_every,
            checkpoint_every,
            eval_seeds,
            horizon,
            progress,
            callback,
            resume,
            outer_config,
        )


def _meta_train(
    system,
    estimator,
    outer_optimizer,
    steps,
    out,
    key,
    theta0,
    log_every,
    checkpoint_every,
    eval_seeds,
    horizon,
    progress,
    callback,
    resume,
    outer_config,
) -> MetaTrainResult:
    k_init, k_train, k_eval = jax.random.split(key, 3)
    if outer_config is None:
        # Without a description, the optimizer's state layout (its kind, not its settings)
        # still tells Adam from SGD.
        outer_config = {
            "state": str(jax.tree_util.tree_structure(jax.eval_shape(outer_optimizer.init, theta0)))
        }
    evaluate = make_evaluator(system, eval_seeds, horizon, k_eval)

    train_step = _train_step(system, estimator, outer_optimizer)

    ckpt = out / CHECKPOINT
    writer = distributed.is_main_process()
    multi = distributed.process_count() > 1
    template = jax.eval_shape(
        lambda: (theta0, outer_optimizer.init(theta0), estimator.init(k_init, theta0))
    )
    # The run's identity includes its code: the traced programs, not only names and
    # settings, so a resume with another system of the same name is refused.
    code = _code_fingerprint(
        system,
        theta0,
        train_step,
        (
            *template,
            jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct(k_train.shape, k_train.dtype),
        ),
    )
    fp = _fingerprint(
        system,
        estimator,
        theta0,
        key,
        outer=outer_config,
        log_every=log_every,
        eval_seeds=eval_seeds,
        eval_horizon=horizon,
        code=code,
    )
    fingerprint = json.dumps(fp, sort_keys=True)
    loaded = _restore_checkpoint(ckpt, template, fingerprint, resume)
    if loaded is not None and loaded[1] > steps:
        raise InputError(
            f"{ckpt} is at step {loaded[1]}, past the {steps} steps asked for; "
            f"ask for --steps {loaded[1]} or more to continue it, or pass "
            "--no-resume to start over"
        )
    fresh = (theta0, outer_optimizer.init(theta0))
    if loaded is None or loaded[1] == 0:
        # Step 0 is the initial state itself: rebuilt, it runs exactly as a fresh start.
        start, records, evals = 0, [], []
        cur = (*fresh, jax.jit(estimator.init)(k_init, theta0))
    else:
        host, start, records, evals = loaded
        # Placed as the step places its own outputs, so the resumed steps run the very
        # program the uninterrupted run ran from its second step on: bit-identical.
        # (The initial state's shardings come from compiling init: eval_shape drops them.)
        init_sh = jax.jit(estimator.init).lower(k_init, theta0).compile().output_shardings
        est_abstract = jax.tree_util.tree_map(
            lambda t, sh: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=sh), template[2], init_sh
        )
        out_sh = (
            train_step.lower(*fresh, est_abstract, jnp.asarray(1, jnp.int32), k_train)
            .compile()
            .output_shardings[:3]
        )
        like = jax.tree_util.tree_map(
            lambda t, sh: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=sh),
            template,
            tuple(out_sh),
        )
        cur = distributed.from_host(host, like)
    wall = 0.0

    def eval_record(step, theta):
        m, vals = distributed.to_host(evaluate(theta))
        return {
            "step": step,
            "meta_loss": float(m),
            "nonfinite": int(np.sum(~np.isfinite(vals))),
            **theta_record(theta),
        }

    def save_checkpoint(step, state):
        # Gathering is a collective (every process); writing is process 0's alone.
        leaves = distributed.to_host(jax.tree_util.tree_leaves(state))
        if not writer:
            return
        arrays = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)}
        arrays.update(
            step=np.asarray(step),
            fingerprint=np.asarray(fingerprint),
            history=np.asarray(json.dumps({"records": records[:step], "evals": evals})),
        )
        save_npz(ckpt, arrays)
        _write_log(out, records[:step], evals)

    if not evals:
        evals.append(eval_record(0, cur[0]))
    # A step counts once ``committed`` names it: an interrupt anywhere before that drops
    # the step, and the resumed run redoes it with the same key.
    committed = (start, cur)
    interrupted = False
    # SIGTERM (a scheduler's stop, `kill`) checkpoints like Ctrl-C. Signal handlers can only
    # be set from the main thread; elsewhere the default behaviour stays.
    main_thread = threading.current_thread() is threading.main_thread()
    # Across processes a stop must land on the same step everywhere: the signals only set
    # a flag, and the processes agree on it at the end of each step.
    stop_flag = []

    def _request_stop(signum, frame):
        stop_flag.append(signum)

    handler = _request_stop if multi else _raise_terminated
    old_term = signal.signal(signal.SIGTERM, handler) if main_thread else None
    old_int = signal.signal(signal.SIGINT, _request_stop) if main_thread and multi else None
    bar = progress_bar(
        total=steps,
        desc=f"meta-train {estimator.name} on {system.name}",
        enabled=progress if writer else False,
    )
    try:
        with bar:
            bar.skip(start)  # a resumed run: the time estimate counts from here
            for step in range(start + 1, steps + 1):
                t0 = time.perf_counter()
                theta, opt_state, est_state, info, finite = train_step(
                    *committed[1], jnp.asarray(step, jnp.int32), k_train
                )
                info = distributed.to_host(info)
                wall += time.perf_counter() - t0
                rec = {
                    "loss": float(info["loss"]),
                    "grad_norm": float(info["grad_norm"]),
                    "nonfinite_grad": int(info["nonfinite_grad"]),
                    "nonfinite_losses": int(info["nonfinite_losses"]),
                    "skipped": int(not bool(finite)),
                }
                ev = eval_record(step, theta) if step % log_every == 0 or step == steps else None
                records.append(rec)
                if ev is not None:
                    evals.append(ev)
                committed = (step, (theta, opt_state, est_state))
                if step % checkpoint_every == 0 or step == steps:
                    save_checkpoint(*committed)
                if ev is not None:
                    bar.set_postfix_str(f"meta-loss {ev['meta_loss']:.4g}")
                bar.update(1)
                if callback is not None:
                    try:
                        callback(step, rec)
                    except KeyboardInterrupt:
                        if not multi:
                            raise
                        stop_flag.append("callback")
                if multi and distributed.any_process(bool(stop_flag)):
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
        n = committed[0]
        del records[n:]
        evals[:] = [e for e in evals if e["step"] <= n]
        save_checkpoint(*committed)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)
            if old_int is not None:
                signal.signal(signal.SIGINT, old_int)
    step, (theta, _, _) = committed
    theta_np = distributed.to_host(theta)
    history = {k: [r[k] for r in records] for k in STEP_FIELDS}
    if writer:
        _write_results(
            out, system, estimator, theta_np, step, steps, history, evals, interrupted, wall
        )
    return MetaTrainResult(theta_np, step, history, evals, interrupted, out)


THETA_LOG_MAX = 64  # θ with at most this many numbers is logged whole, else by its norm


def theta_record(theta) -> dict:
    """θ for the log: ``{"theta": {plain name: value}}`` (lists for arrays) when it has at
    most `THETA_LOG_MAX` numbers, else ``{"theta_norm": ‖θ‖}`` (theta.npz has it whole)."""
    leaves = named_leaves(distributed.to_host(theta))
    if sum(np.size(v) for v in leaves.values()) <= THETA_LOG_MAX:
        return {"theta": {k: np.asarray(v, np.float64).tolist() for k, v in leaves.items()}}
    return {
        "theta_norm": float(
            np.sqrt(sum(np.sum(np.square(np.asarray(v, np.float64))) for v in leaves.values()))
        )
    }


def _write_log(out: Path, records: list, evals: list) -> None:
    """Rewrite log.jsonl from the step records: one line per evaluation, with the
    estimator's statistics averaged over the steps since the previous evaluation."""
    history = {k: [r[k] for r in records] for k in STEP_FIELDS}
    lines = []
    prev = 0
    for e in evals:
        s = e["step"]
        rec = {"step": s, "eval_meta_loss": e["meta_loss"], "eval_nonfinite": e["nonfinite"]}
        rec.update({k: e[k] for k in ("theta", "theta_norm") if k in e})
        if s > prev:
            seg = slice(prev, s)
            rec["train_loss"] = float(np.mean(history["loss"][seg]))
            rec["grad_norm"] = float(np.mean(history["grad_norm"][seg]))
            rec["nonfinite_grad"] = int(np.sum(history["nonfinite_grad"][seg]))
            rec["nonfinite_losses"] = int(np.sum(history["nonfinite_losses"][seg]))
            rec["skipped"] = int(np.sum(history["skipped"][seg]))
        lines.append(dumps(rec, indent=None))
        prev = s
    write_text(out / LOG, "".join(line + "\n" for line in lines))


def _write_results(out, system, estimator, theta, step, steps, history, evals, interrupted, wall):
    save_npz(out / THETA, named_leaves(theta))
    logged = [e for e in evals if "theta" in e]
    per_eval = (
        {f"theta/{k}": np.asarray([e["theta"][k] for e in logged]) for k in logged[0]["theta"]}
        if logged and len(logged) == len(evals)
        else {"theta_norm": np.asarray([e.get("theta_norm", np.nan) for e in evals])}
    )
    save_npz(
        out / CURVES,
        {
            **{k: np.asarray(v) for k, v in history.items()},
            "eval_step": np.asarray([e["step"] for e in evals]),
            "eval_meta_loss": np.asarray([e["meta_loss"] for e in evals]),
            **per_eval,
        },
    )
    summary = {
        "system": system.describe(),
        "estimator": {
            "name": estimator.name,
            "params": estimator.params,
            "traits": estimator.traits(),
        },
        "steps_done": step,
        "steps": steps,
        "interrupted": interrupted,
        "initial_meta_loss": evals[0]["meta_loss"] if evals else None,
        "final_meta_loss": evals[-1]["meta_loss"] if evals else None,
        "evals": evals,
        "skipped_steps": int(np.sum(history["skipped"])),
        "nonfinite_grad_entries": int(np.sum(history["nonfinite_grad"])),
        "train_seconds_this_session": wall,
        "precision": precision_info(),
    }
    write_text(out / RESULTS, dumps(summary))
