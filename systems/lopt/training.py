"""Inner training as an iterative system: one step = one update of the inner parameters by a
(learned) optimizer; θ = the optimizer's weights or hyperparameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from chaosgrad.systems.lopt.family import family_task
from chaosgrad.systems.lopt.learned import lstm_lopt, mlp_lopt
from chaosgrad.systems.lopt.optimizers import Optimizer, StepInfo, adam, momentum, sgd
from chaosgrad.systems.lopt.tasks import TASKS, Task, make_task
from chaosgrad.systems.maps import _dtype, _precision

from chaosgrad._types import PyTree
from chaosgrad.checks import check_int
from chaosgrad.errors import InputError
from chaosgrad.system import StepOut, System

# name -> (factory, default lr)
OPTIMIZERS: dict[str, tuple[Callable[..., Optimizer], float]] = {
    "sgd": (sgd, 0.1),
    "momentum": (momentum, 0.05),
    "adam": (adam, 0.01),
    "mlp": (mlp_lopt, 1e-3),
    "lstm": (lstm_lopt, 1e-3),
}
LOSSES = ("train", "valid")
# the sine task's top Hessian eigenvalue is ~50 at initialisation: SGD at 0.1 diverges there
TASK_LR = {("sine_mlp", "sgd"): 0.01, ("sine_mlp", "momentum"): 0.005}


class LoptState(NamedTuple):
    """The state of inner training.

    Attributes:
      params: the inner parameters.
      opt_state: the optimizer's state (float leaves only).
      step: the inner step index t (int32).
      data_key: a key drawn at init; the fixed batch (``fixed_batch=True``) comes from it.
      task: the task's constants (e.g. the quadratic's Hessian); fixed, not dynamical.
    """

    params: PyTree
    opt_state: PyTree
    step: jax.Array
    data_key: jax.Array
    task: PyTree


SCHEDULES = ("constant", "cosine")


def inner_step(
    tk: Task,
    opt: Optimizer,
    state: LoptState,
    theta: PyTree,
    key: jax.Array,
    need_valid: bool = False,
    fixed_batch: bool = False,
    schedule: str = "constant",
    inner_steps: int = 1,
) -> tuple[LoptState, jax.Array, jax.Array | None]:
    """One update of the inner parameters (the step of `lopt_system`, shared with the
    baselines): the loss and gradient on a training minibatch at the current parameters,
    the loss on a validation minibatch when ``need_valid``, one optimizer update (times
    the task's mask, for a padded task). Returns the new state and the two losses, both
    at the parameters before the update (the validation loss None when not needed)."""
    k_train, k_valid = jax.random.split(key)
    if fixed_batch:
        k_train = jax.random.fold_in(state.data_key, 0)
        k_valid = jax.random.fold_in(state.data_key, 1)
    batch = tk.batch(k_train, "train")
    train_loss, grads = jax.value_and_grad(tk.loss)(state.params, state.task, batch)
    valid_loss = (
        tk.loss(state.params, state.task, tk.batch(k_valid, "valid")) if need_valid else None
    )
    live = None if tk.mask is None else tk.mask(state.task)
    info = StepInfo(state.step, train_loss, valid_loss, live)
    updates, opt_state = opt.update(grads, state.opt_state, state.params, theta, info)
    if schedule == "cosine":
        frac = jnp.minimum(state.step, inner_steps).astype(train_loss.dtype) / inner_steps
        scale = 0.5 * (1 + jnp.cos(jnp.pi * frac))
        updates = jax.tree_util.tree_map(lambda u: u * scale.astype(u.dtype), updates)
    if live is not None:
        updates = jax.tree_util.tree_map(lambda u, k: u * k.astype(u.dtype), updates, live)
    params = optax.apply_updates(state.params, updates)
    new = LoptState(params, opt_state, state.step + 1, state.data_key, state.task)
    return new, train_loss, valid_loss


def make_optimizer(
    name: str, lr: float | None = None, lopt_hidden: int = 32, dtype=jnp.float32
) -> Optimizer:
    """Build the optimizer ``name`` (one of `OPTIMIZERS`); ``lr`` None takes its default."""
    if name not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")
    factory, default_lr = OPTIMIZERS[name]
    lr = default_lr if lr is None else float(lr)
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr!r}")
    if name in ("mlp", "lstm"):
        return factory(lr=lr, hidden=int(lopt_hidden), dtype=dtype)
    return factory(lr=lr, dtype=dtype)


def lopt_system(
    task: str = "digits_mlp",
    optimizer: str = "mlp",
    inner_steps: int = 100,
    lr: float | None = None,
    batch_size: int = 128,
    loss: str = "train",
    log_loss: bool = True,
    hidden: int = 32,
    depth: int = 2,
    dim: int = 10,
    noise: float = 0.0,
    fixed_batch: bool = False,
    sample_task: bool = False,
    lopt_hidden: int = 32,
    seed: int = 0,
    dtype: str | None = None,
    schedule: str = "constant",
    split: str = "meta_train",
    kinds: str = "all",
) -> System:
    """Inner training of ``task`` by ``optimizer`` as a `chaosgrad.System`.

    State: `LoptState` (inner params, optimizer state, step, data key, task constants).
    One step: the loss and gradient on this step's minibatch at the current parameters,
    then one optimizer update. The per-step loss ℓ_t is the training loss on that minibatch
    at the parameters *before* the update (or, with ``loss="valid"``, the loss on a
    validation minibatch there), log-transformed when ``log_loss`` (the paper's meta-loss
    is the mean over the unroll of log(loss)). The phase is the inner parameters plus the
    optimizer state; the step counter, the data key and the task constants are held fixed.

    Args:
      task: "digits_mlp" (ReLU MLP on sklearn digits), "sine_mlp" (tanh MLP sinusoid
        regression), "quadratic" (random quadratic; gradient descent's Jacobian is I − ηH)
        or "family" (`chaosgrad.systems.lopt.family`: every init, and so every particle
        and every reset of a truncated estimator, draws a member of ``split``; hidden,
        depth, dim and noise are the members' own, and ``sample_task`` is implied).
      optimizer: "sgd", "momentum", "adam" (θ = log learning rate and friends), "mlp" (the
        paper's per-parameter MLP learned optimizer) or "lstm" (hierarchical).
      inner_steps: the natural horizon (the tools' default unroll length).
      lr: the baselines' learning rate (θ's default ln lr) or the learned optimizers' step
        scale (fixed); None: 0.1 sgd, 0.05 momentum, 0.01 adam, 1e-3 learned (on
        sine_mlp: 0.01 sgd, 0.005 momentum).
      batch_size: minibatch size of the MLP tasks.
      loss: "train" or "valid": which loss the per-step loss ℓ_t is.
      log_loss: ℓ_t = log(loss) instead of the loss.
      hidden: width of the inner MLP's hidden layers.
      depth: number of hidden layers of the inner MLP.
      dim: the quadratic's dimension.
      noise: the std of the quadratic's per-step target shift.
      fixed_batch: reuse one training batch (drawn from the init key) at every step, as in
        the paper's Figure 3; else a fresh minibatch per step from the step key.
      sample_task: draw the task's constants from the run's init key (each seed its own
        task); else the task is fixed by ``seed``.
      lopt_hidden: hidden width of the learned optimizers' per-parameter MLP.
      seed: seeds the default θ (learned optimizer weights) and the fixed task.
      dtype: "float32" or "float64" (None: JAX's current default float).
      schedule: "constant", or "cosine": every update is scaled by
        ½(1 + cos(π min(t, inner_steps) / inner_steps)) at inner step t (a cosine decay of
        the learning rate to 0 at ``inner_steps``; updates are linear in the learning rate).
      split: with ``task="family"``: "meta_train" (default), "held_out" or "all" — the
        members the task is drawn from (`chaosgrad.systems.lopt.family.split_indices`).
      kinds: with ``task="family"``: "all" or a comma-separated subset of "mlp", "conv",
        "quad", "rnn" — only members of those kinds (a smaller, faster-compiling program).
    """
    dt = _dtype(dtype)
    if schedule not in SCHEDULES:
        raise InputError(f"schedule {schedule!r} is not accepted: use one of {SCHEDULES}")
    if loss not in LOSSES:
        raise InputError(f"loss {loss!r} is not accepted: use one of {LOSSES}")
    if task not in TASKS and task != "family":
        raise InputError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}, family")
    if lr is None:
        lr = TASK_LR.get((task, optimizer), OPTIMIZERS.get(optimizer, (None, None))[1])
    opt = make_optimizer(optimizer, lr, lopt_hidden, dt)
    assert lr is not None  # make_optimizer refused an unknown optimizer
    lr = float(lr)
    if task == "family":
        tk = family_task(split, batch_size=batch_size, dtype=dt, kinds=kinds)
        sample_task = True
    elif task == "quadratic":
        tk = make_task(task, dim=dim, noise=noise, dtype=dt)
    else:
        tk = make_task(task, hidden=hidden, depth=depth, batch_size=batch_size, dtype=dt)
    inner_steps = check_int(inner_steps, "lopt inner_steps", lo=1)
    seed = check_int(seed, "lopt seed", lo=0, hi=2**32 - 1)
    root = jax.random.PRNGKey(seed)
    theta0 = opt.init_theta(jax.random.fold_in(root, 1))
    fixed_consts = tk.sample(jax.random.fold_in(root, 2))
    need_valid = opt.needs_valid or loss == "valid"

    def init(key, theta):
        k_task, k_params, k_data = jax.random.split(key, 3)
        consts = tk.sample(k_task) if sample_task else fixed_consts
        params = tk.init(k_params, consts)
        return LoptState(params, opt.init(params, theta), jnp.zeros((), jnp.int32), k_data, consts)

    def step(state, theta, key):
        new, train_loss, valid_loss = inner_step(
            tk,
            opt,
            state,
            theta,
            key,
            need_valid=need_valid,
            fixed_batch=fixed_batch,
            schedule=schedule,
            inner_steps=inner_steps,
        )
        raw = valid_loss if loss == "valid" else train_loss
        ell = jnp.log(raw) if log_loss else raw
        aux = {"train_loss": train_loss}
        if valid_loss is not None:
            aux["valid_loss"] = valid_loss
        return new, StepOut(loss=ell, aux=aux)

    def phase(state):
        return {"params": state.params, "opt_state": state.opt_state}

    def with_phase(state, ph):
        return state._replace(params=ph["params"], opt_state=ph["opt_state"])

    loss_doc = (
        ("log " if log_loss else "")
        + (
            "training loss on this step's minibatch"
            if loss == "train"
            else "validation loss on a validation minibatch"
        )
        + ", before the update"
    )
    return System(
        init,
        step,
        phase=phase,
        with_phase=with_phase,
        name=f"lopt-{task}-{optimizer}",
        theta=theta0,
        horizon=inner_steps,
        precision=_precision(dt),
        description=f"{tk.description}; trained by {opt.name}",
        theta_doc=opt.theta_doc,
        loss_doc=loss_doc,
        metadata={
            "task": task,
            "optimizer": optimizer,
            "lr": lr,
            "batch_size": int(batch_size),
            "loss": loss,
            "log_loss": bool(log_loss),
            "hidden": int(hidden),
            "depth": int(depth),
            "dim": int(dim),
            "noise": float(noise),
            "fixed_batch": bool(fixed_batch),
            "sample_task": bool(sample_task),
            "lopt_hidden": int(lopt_hidden),
            "seed": int(seed),
            "schedule": schedule,
            "split": split,
            "kinds": kinds,
        },
    )
