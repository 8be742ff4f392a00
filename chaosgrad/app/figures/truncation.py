"""Figure 6 of the paper: training a policy by backprop through a whole episode with the
gradient stopped every t steps, a batch of episodes per Adam step, several seeds (the Ant at
paper scale; a cheaper Brax environment at quick scale). The paper: no truncation fails, only
moderate t learns. Non-finite gradients are counted and their updates skipped, never zeroed.
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
    # quick: a cheap Brax environment (the Ant's 400-step runs do not fit 2 cores); a batch of
    # episodes per Adam step, several training seeds, the truncation grid of the issue. Cost
    # on 2 cores: ~40 s compilation per t, ~0.25 s per episode-batch element per Adam step
    # (every t divides the episode, so each run sees the same 90 steps)
    "quick": {"env": "inverted_double_pendulum", "episode": 90,
              "truncations": [1, 3, 10, 30, 90], "iterations": 25, "batch": 4, "seeds": 3,
              "lr": 3e-3, "layers": 2},
    "paper": {"env": "ant", "episode": 400, "truncations": [1, 5, 10, 20, 50, 400],
              "iterations": 300, "batch": 32, "seeds": 3, "lr": 1e-3, "layers": 4},
}
# reward reported per training seed: the mean over the last 10% of iterations
FINAL_FRACTION = 0.1


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


def _train(system, theta, size, every, key):
    """Adam on the batch mean of the truncated episode loss; each iteration draws ``batch``
    fresh episodes (reset and action noise). A non-finite gradient is counted and its update
    skipped, never zeroed."""
    opt = optax.adam(size["lr"])
    opt_state = opt.init(theta)

    def batch_loss(th, keys):
        return jnp.mean(jax.vmap(lambda k: truncated_loss(system, th, k, size["episode"],
                                                          every))(keys))

    vg = jax.jit(jax.value_and_grad(batch_loss))
    losses, norms, skipped = [], [], 0
    for i in range(size["iterations"]):
        loss, g = vg(theta, jax.random.split(jax.random.fold_in(key, i), size["batch"]))
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


def make_system(size):
    """The environment under a tanh MLP policy with action noise, loss −reward."""
    return systems.make("brax", env=size["env"], backend="generalized", policy="mlp",
                        hidden=32, layers=size["layers"], seed=0, loss="reward",
                        action_noise=0.1)


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Train ``seeds`` policies per truncation length; loss and gradient norm per iteration."""
    from chaosgrad.progress import progress_bar
    from chaosgrad.systems.brax import init_policy

    size = SIZES[scale]
    system = make_system(size)
    sizes_, scale_ = system.meta["policy_sizes"], system.meta["policy_scale"]
    dtype = jax.tree_util.tree_leaves(system.theta)[0].dtype
    key = jax.random.PRNGKey(0)
    out = {"truncations": np.asarray(size["truncations"])}
    with progress_bar(len(size["truncations"]) * size["seeds"], "figure truncation", progress,
                      min_total=1) as bar:
        for t in size["truncations"]:
            runs = []
            for sd in range(size["seeds"]):
                # seed sd: its own initial policy and episodes, the same for every t
                k = jax.random.fold_in(key, sd)
                theta0 = init_policy(jax.random.fold_in(k, 1), sizes_, scale_, dtype)
                runs.append(store.part(f"t{t}-s{sd}", lambda t=t, k=k, th=theta0: _train(
                    system, th, size, int(t), jax.random.fold_in(k, 2))))
                bar.update(1)
            for name in ("loss", "grad_norm", "skipped"):
                out[f"{name}_{t}"] = np.stack([r[name] for r in runs])
    meta = {"sizes": size, "system": system.describe(), "seed": 0,
            "note": f"Adam on the mean −reward over {size['batch']} episodes per step; "
                    "gradient stopped every t steps; per seed its own initial policy and "
                    "episode keys, the same for every t; reward = −loss",
            "summary": summary(out, size)}
    return out, meta


def summary(out: dict, size: dict) -> dict:
    """Final reward per truncation: mean over seeds of each seed's mean over the last 10% of
    iterations, with a 95% t interval over seeds; gradient norms; skipped updates."""
    from chaosgrad.stats import mean_interval

    tail = max(1, int(round(FINAL_FRACTION * size["iterations"])))
    res = {}
    for t in size["truncations"]:
        reward = -out[f"loss_{t}"]
        final = np.nanmean(reward[:, -tail:], axis=1)
        iv = mean_interval(final)
        norms = out[f"grad_norm_{t}"]
        finite = norms[np.isfinite(norms)]
        res[str(t)] = {"final_reward": iv.value, "low": iv.low, "high": iv.high,
                       "final_iterations": tail,
                       "initial_reward": float(np.nanmean(reward[:, 0])),
                       "per_seed": [float(x) for x in final],
                       "grad_norm_median": float(np.median(finite)) if finite.size else None,
                       "grad_norm_max": float(np.max(finite)) if finite.size else None,
                       "skipped": int(np.sum(out[f"skipped_{t}"])),
                       "nonfinite_losses": int(np.sum(~np.isfinite(reward)))}
    return res


def draw(results: dict, meta: dict, path) -> None:
    """Left: reward per iteration, mean over seeds with a 95% band. Middle: final reward vs t
    with intervals. Right: gradient norms."""
    import matplotlib.pyplot as plt
    from scipy import stats as st

    from chaosgrad.plots import log_scale, save

    fig, (a, m, b) = plt.subplots(1, 3, figsize=(17, 4.8))
    ep = meta["sizes"]["episode"]
    summ = meta["summary"]
    ts = [int(t) for t in results["truncations"]]
    for i, t in enumerate(ts):
        r = -results[f"loss_{t}"]
        n = r.shape[0]
        mean = np.nanmean(r, axis=0)
        half = (st.t.ppf(0.975, max(n - 1, 1)) * np.nanstd(r, axis=0, ddof=1) / np.sqrt(n)
                if n > 1 else np.zeros_like(mean))
        label = f"t = {t}" + (" (no truncation)" if t >= ep else "")
        if summ[str(t)]["skipped"]:
            label += f", {summ[str(t)]['skipped']} non-finite steps skipped"
        it = np.arange(r.shape[1])
        a.plot(it, mean, color=f"C{i}", label=label)
        a.fill_between(it, mean - half, mean + half, color=f"C{i}", alpha=0.2)
        norms = results[f"grad_norm_{t}"]
        for row in norms:
            ok = np.isfinite(row) & (row > 0)
            b.plot(it[ok], row[ok], color=f"C{i}", lw=0.7, alpha=0.7)
    log_scale(b, np.concatenate([results[f"grad_norm_{t}"].ravel() for t in ts]), "y",
              "gradient norms")
    vals = [summ[str(t)] for t in ts]
    x = np.arange(len(ts))
    m.errorbar(x, [v["final_reward"] for v in vals],
               yerr=[[v["final_reward"] - v["low"] for v in vals],
                     [v["high"] - v["final_reward"] for v in vals]], fmt="o", capsize=4)
    m.axhline(np.mean([v["initial_reward"] for v in vals]), color="0.5", ls="--", lw=0.8,
              label="at initialisation")
    m.set_xticks(x, [str(t) for t in ts])
    m.set_xlabel("gradient stopped every t steps")
    m.set_ylabel(f"reward, mean of the last {vals[0]['final_iterations']} iterations")
    m.set_title(f"final reward, mean and 95% interval over {results[f'loss_{ts[0]}'].shape[0]}"
                " seeds", fontsize=10)
    m.legend(fontsize=8)
    a.set_xlabel("training iteration (Adam step)")
    a.set_ylabel(f"mean reward over {ep}-step episodes")
    a.set_title(f"training, {meta['sizes']['batch']} episodes per step; mean and 95% band "
                "over seeds", fontsize=10)
    a.legend(fontsize=7)
    b.set_xlabel("training iteration")
    b.set_ylabel("‖gradient‖ (one line per seed)")
    b.set_title("gradient norm", fontsize=10)
    for ax in (a, m, b):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Brax {meta['sizes']['env']}: truncated backprop through {ep}-step episodes",
                 fontsize=11)
    fig.tight_layout()
    save(fig, path)
