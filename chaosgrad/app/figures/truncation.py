"""Figure 6 of the paper: training the Ant's policy by backprop through a whole episode with
the gradient stopped every t steps. No truncation explodes; moderate t learns; short t is
myopic. Non-finite gradients are counted and their updates skipped, never zeroed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from chaosgrad import systems
from chaosgrad.gradients import tree_norm
from chaosgrad.system import split_run_key
from chaosgrad.unroll import meta_loss_of, rollout

SIZES = {
    "quick": {"env": "ant", "episode": 100, "truncations": [1, 10, 100], "iterations": 25,
              "lr": 3e-3, "layers": 2},
    "paper": {"env": "ant", "episode": 400, "truncations": [1, 5, 10, 20, 50, 400],
              "iterations": 300, "lr": 1e-3, "layers": 4},
}


def truncated_loss(system, theta, key, steps: int, every: int):
    """The episode's meta-loss with ``jax.lax.stop_gradient`` on the state every ``every``
    steps: its value is the full loss, its gradient the truncated-backprop gradient."""
    k_init, k_steps = split_run_key(key)
    state = system.init(k_init, theta)

    def window(s, w):
        s, losses = rollout(system, theta, lax.stop_gradient(s), k_steps, every, t0=w * every)
        return s, losses

    _, losses = lax.scan(window, state, jnp.arange(steps // every))
    return meta_loss_of(system, losses.reshape(-1))


def _train(system, size, every, key):
    opt = optax.adam(size["lr"])
    theta = system.theta
    opt_state = opt.init(theta)
    vg = jax.jit(jax.value_and_grad(
        lambda th, k: truncated_loss(system, th, k, size["episode"], every)))
    losses, norms, skipped = [], [], 0
    for i in range(size["iterations"]):
        loss, g = vg(theta, jax.random.fold_in(key, i))
        n = float(tree_norm(g))
        losses.append(float(loss))
        norms.append(n)
        if not np.isfinite(n):
            skipped += 1
            continue
        upd, opt_state = opt.update(g, opt_state, theta)
        theta = optax.apply_updates(theta, upd)
    return {"loss": np.asarray(losses), "grad_norm": np.asarray(norms),
            "skipped": np.asarray(skipped)}


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Train once per truncation length; record loss and gradient norm per iteration."""
    from chaosgrad.progress import progress_bar

    size = SIZES[scale]
    system = systems.make("brax", env=size["env"], backend="generalized", policy="mlp",
                          hidden=32, layers=size["layers"], seed=0, loss="reward")
    key = jax.random.PRNGKey(0)
    out = {"truncations": np.asarray(size["truncations"])}
    with progress_bar(len(size["truncations"]), "figure truncation", progress,
                      min_total=1) as bar:
        for t in size["truncations"]:
            p = store.part(f"t{t}", lambda t=t: _train(system, size, int(t), key))
            for k, v in p.items():
                out[f"{k}_{t}"] = v
            bar.update(1)
    meta = {"sizes": size, "system": system.describe(), "seed": 0,
            "note": "Adam on the full-episode mean -reward; gradient stopped every t steps; "
                    "the same episode keys for every t"}
    return out, meta


def draw(results: dict, meta: dict, path) -> None:
    """Left: training curves per truncation length. Right: gradient norms."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    ep = meta["sizes"]["episode"]
    for i, t in enumerate(results["truncations"]):
        t = int(t)
        label = f"t = {t}" + (" (no truncation)" if t >= ep else "")
        skipped = int(results[f"skipped_{t}"])
        if skipped:
            label += f", {skipped} non-finite steps skipped"
        a.plot(-results[f"loss_{t}"], color=f"C{i}", label=label)
        n = results[f"grad_norm_{t}"]
        ok = np.isfinite(n) & (n > 0)
        b.semilogy(np.arange(len(n))[ok], n[ok], color=f"C{i}", label=f"t = {t}")
    a.set_xlabel("training iteration")
    a.set_ylabel(f"mean reward over the {ep}-step episode")
    a.set_title("policy training, gradient stopped every t steps")
    a.legend(fontsize=7)
    b.set_xlabel("training iteration")
    b.set_ylabel("‖gradient‖")
    b.set_title("gradient norm")
    b.legend(fontsize=7)
    for ax in (a, b):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Brax {meta['sizes']['env']}: truncated backprop through an episode",
                 fontsize=11)
    fig.tight_layout()
    save(fig, path)
