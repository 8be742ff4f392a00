"""Hand-designed baselines for learned optimizers on the task family: Adam with one learning
rate tuned for the meta-training split, Adam tuned per task, and a greedy ordered list of
Adam hyperparameters (Metz et al. 2020, "Using a thousand optimization tasks to learn
hyperparameter search strategies") evaluated on a held-out task by its best first k entries.

A run's *final loss* is the mean over its last ``tail`` steps of log(max(loss, 1e-12)) of the
per-step loss (training minibatch, or validation with ``loss="valid"``, at the parameters
before each update); a run that produced a non-finite loss counts as +inf. Logs make the
scales of different members comparable (a difference is a ratio); the floor keeps a
quadratic solved to 0 from dominating a mean. `member_curves` runs any optimizer, learned
ones included, on given members under the same randomness, for comparisons with these.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from chaosgrad.systems.lopt import family
from chaosgrad.systems.lopt.training import LoptState, inner_step, make_optimizer

from chaosgrad.errors import InputError

LOSS_FLOOR = 1e-12
HPARAMS = ("lr", "b1", "b2", "eps")


def adam_theta(hparams) -> dict:
    """θ of `adam` (log lr, logit β1, logit β2, log ε) from rows (lr, β1, β2, ε)."""
    h = jnp.asarray(hparams)
    lr, b1, b2, eps = h[..., 0], h[..., 1], h[..., 2], h[..., 3]
    return {
        "log_lr": jnp.log(lr),
        "logit_b1": jnp.log(b1 / (1 - b1)),
        "logit_b2": jnp.log(b2 / (1 - b2)),
        "log_eps": jnp.log(eps),
    }


def adam_grid(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random Adam settings (rows lr, β1, β2, ε): lr log-uniform in [1e-4, 1], 1 − β1 in
    [1e-3, 1], 1 − β2 in [1e-4, 1], ε in [1e-10, 1] (log-uniform; numpy seed ``seed``)."""
    rng = np.random.default_rng(seed)

    def lu(lo, hi):
        return np.exp(rng.uniform(np.log(lo), np.log(hi), n))

    return np.stack(
        [lu(1e-4, 1.0), 1 - lu(1e-3, 1.0), 1 - lu(1e-4, 1.0), lu(1e-10, 1.0)], axis=1
    ).clip(0, 1 - 1e-7)


def with_lrs(lrs) -> np.ndarray:
    """Adam settings with the given learning rates and the default β1, β2, ε."""
    lrs = np.asarray(lrs, np.float64).reshape(-1)
    return np.stack(
        [lrs, np.full_like(lrs, 0.9), np.full_like(lrs, 0.999), np.full_like(lrs, 1e-8)], 1
    )


def final_losses(
    hparams,
    task_indices,
    inner_steps: int = 100,
    seeds: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    loss: str = "train",
    tail: int | None = None,
    dtype=jnp.float32,
) -> np.ndarray:
    """Final losses of Adam at each setting on each family member: shape (settings, tasks).

    Args:
      hparams: rows (lr, β1, β2, ε), shape (settings, 4).
      task_indices: family member indices (`family.members`).
      inner_steps: updates per run.
      seeds: runs per (setting, task), averaged; run r of task j draws its initial
        parameters, minibatches and quadratic from the same key for every setting, so
        settings are compared on common randomness.
      loss: "train" or "valid".
      tail: steps averaged at the end (None: a tenth of ``inner_steps``, at least 1).
    """
    if loss not in ("train", "valid"):
        raise InputError(f"loss {loss!r} is not accepted: use 'train' or 'valid'")
    inner_steps = int(inner_steps)
    tail = max(1, inner_steps // 10) if tail is None else int(tail)
    if not 1 <= tail <= inner_steps:
        raise InputError(f"tail must be in [1, inner_steps], got {tail}")
    h = np.asarray(hparams, np.float64).reshape(-1, 4)
    idx = np.asarray(task_indices, np.int32).reshape(-1)
    dtype = jnp.dtype(dtype)
    theta = jax.tree_util.tree_map(lambda x: x.astype(dtype), adam_theta(h))
    run = _runner("adam", None, 32, inner_steps, tail, int(batch_size), loss, dtype, _kinds(idx))
    return np.asarray(run(theta, jnp.asarray(idx), _run_keys(idx, seeds, seed)), np.float64).mean(
        axis=-1
    )


def member_curves(
    optimizer: str,
    thetas,
    task_indices,
    inner_steps: int,
    seeds: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    loss: str = "train",
    lr: float | None = None,
    lopt_hidden: int = 32,
    dtype=jnp.float32,
) -> np.ndarray:
    """Per-step log losses, log(max(loss, 1e-12)), of ``optimizer`` (a name of
    `chaosgrad.systems.lopt.training.OPTIMIZERS`: a learned one or a baseline) at each θ of
    ``thetas`` (a pytree whose leaves have a leading axis) on each family member: shape
    (thetas, tasks, seeds, inner_steps). Non-finite losses are kept (NaN stays NaN).

    Run r of member j draws its initial parameters, minibatches and quadratic from the key
    `final_losses` gives it for the same ``seed``, ``seeds`` and ``inner_steps``, so a learned
    optimizer and Adam are compared on common randomness. ``lr``: the optimizer's step scale
    (`make_optimizer`; None: its default); ``loss``: which loss is recorded, "train" or
    "valid" (a learned optimizer that reads the validation loss gets it either way).
    """
    if loss not in ("train", "valid"):
        raise InputError(f"loss {loss!r} is not accepted: use 'train' or 'valid'")
    idx = np.asarray(task_indices, np.int32).reshape(-1)
    dtype = jnp.dtype(dtype)
    run = _runner(
        optimizer,
        lr,
        int(lopt_hidden),
        int(inner_steps),
        0,
        int(batch_size),
        loss,
        dtype,
        _kinds(idx),
    )
    thetas = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), thetas)
    return np.asarray(run(thetas, jnp.asarray(idx), _run_keys(idx, seeds, seed)), np.float64)


def _kinds(idx: np.ndarray) -> tuple[str, ...]:
    # only the kinds of these tasks enter the program (each kind adds compile time)
    return family.parse_kinds({family.members()[int(i)]["kind"] for i in idx})


def _run_keys(idx: np.ndarray, seeds: int, seed: int) -> jax.Array:
    """Run r of member j: the r-th of ``seeds`` keys split from fold_in(PRNGKey(seed), j)."""
    root = jax.random.PRNGKey(seed)
    return jnp.stack([jax.random.split(jax.random.fold_in(root, int(j)), seeds) for j in idx])


@functools.lru_cache(maxsize=16)
def _runner(
    optimizer: str,
    lr: float | None,
    lopt_hidden: int,
    inner_steps: int,
    tail: int,
    batch_size: int,
    loss: str,
    dtype,
    kinds,
):
    """The jitted (θs × tasks × seeds) runs of ``optimizer``, cached so that calls of one
    shape compile once. ``tail`` > 0: each run's final loss (the mean log loss over its last
    ``tail`` steps, +inf when one is non-finite); 0: its per-step log losses."""
    tk = family.family_task("all", batch_size=batch_size, dtype=dtype, kinds=kinds)
    opt = make_optimizer(optimizer, lr, lopt_hidden, dtype)
    need_valid = opt.needs_valid or loss == "valid"

    def run(theta, index, key):
        k_task, k_params, k_data, k_steps = jax.random.split(key, 4)
        consts = family.member_consts(index, k_task, dtype)
        params = tk.init(k_params, consts)
        state = LoptState(params, opt.init(params, theta), jnp.zeros((), jnp.int32), k_data, consts)

        def body(s, k):
            s, lt, lv = inner_step(tk, opt, s, theta, k, need_valid=need_valid)
            return s, (lv if loss == "valid" else lt)

        _, ls = jax.lax.scan(body, state, jax.random.split(k_steps, inner_steps))
        ls = jnp.log(jnp.maximum(ls, LOSS_FLOOR))
        if not tail:
            return ls
        ls = ls[-tail:]
        return jnp.where(jnp.all(jnp.isfinite(ls)), jnp.mean(ls), jnp.inf)

    over_seeds = jax.vmap(run, in_axes=(None, None, 0))
    over_tasks = jax.vmap(over_seeds, in_axes=(None, 0, 0))
    return jax.jit(jax.vmap(over_tasks, in_axes=(0, None, None)))


def tune_adam_global(losses: np.ndarray) -> int:
    """The setting (row of ``losses``, shape (settings, tasks)) with the best mean final loss
    over the tasks: Adam tuned once for the whole meta-training split."""
    return int(np.argmin(np.asarray(losses).mean(axis=1)))


def tune_adam_per_task(losses: np.ndarray) -> np.ndarray:
    """The best setting of each task (column of ``losses``): the per-task upper bar."""
    return np.argmin(np.asarray(losses), axis=0)


def greedy_list(losses: np.ndarray, k: int) -> list[int]:
    """An ordered list of ``k`` settings (rows of ``losses``, shape (settings, tasks)) chosen
    greedily: each next entry is the setting whose addition most lowers the mean over tasks
    of the best final loss among the entries so far (ties: the lowest row). The first entry
    is therefore the globally tuned setting."""
    losses = np.asarray(losses, np.float64)
    if not 1 <= k <= losses.shape[0]:
        raise InputError(f"k must be in [1, {losses.shape[0]}], got {k}")
    order: list[int] = []
    best = np.full(losses.shape[1], np.inf)
    for _ in range(k):
        score = np.minimum(losses, best).mean(axis=1)
        score[order] = np.inf  # never pick an entry twice
        i = int(np.argmin(score))
        order.append(i)
        best = np.minimum(best, losses[i])
    return order


def best_of_list(losses: np.ndarray, order, k: int) -> np.ndarray:
    """Best final loss per task (column of ``losses``) among the first ``k`` entries of
    ``order``: the list evaluated with a budget of k trainings per task."""
    return np.asarray(losses)[list(order)[:k]].min(axis=0)


def adam_list(
    task_indices, k: int = 5, candidates: int = 32, seed: int = 0, **run
) -> tuple[np.ndarray, np.ndarray]:
    """Meta-learn an ordered list of ``k`` Adam settings over ``task_indices`` (the
    meta-training members) from ``candidates`` random settings (`adam_grid`). Returns the
    list (rows lr, β1, β2, ε) and the candidates' losses there. ``run``: `final_losses`'s
    options."""
    grid = adam_grid(candidates, seed)
    losses = final_losses(grid, task_indices, seed=seed, **run)
    return grid[greedy_list(losses, k)], losses


def evaluate_list(settings, task_indices, k: int, seed: int = 1, **run) -> np.ndarray:
    """Best final loss on each member of ``task_indices`` (held-out ones) among the first
    ``k`` settings of an ordered list (k trainings per task; ``seed`` should differ from
    the list's own). ``run``: `final_losses`'s options."""
    s = np.asarray(settings)[:k]
    return final_losses(s, task_indices, seed=seed, **run).min(axis=0)
