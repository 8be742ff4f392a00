"""Figure 6 of the paper: training a policy by backprop through a whole episode with the
gradient stopped every t steps — a batch of episodes per Adam step, several training seeds,
and each policy scored on a fixed set of held-out evaluation episodes every few steps (the Ant
at paper scale; a cheaper Brax environment at quick scale). The paper: no truncation fails,
only moderate t learns. Non-finite gradients are counted and their updates skipped, never
zeroed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from chaosgrad import systems
from chaosgrad.system import split_run_key
from chaosgrad.unroll import meta_loss_of, pure_unroll

SIZES = {
    # quick: Brax's inverted double pendulum on its spring backend (the cheapest Brax physics,
    # ~0.1 ms per episode step with its gradient here; the Ant's 400-step runs do not fit 2
    # cores). 150-step episodes (3 s): long enough that the untruncated gradient explodes
    # (norms ~1e4) while a policy can still learn in 60 Adam steps. Every t divides the
    # episode, so every run sees the same steps.
    "quick": {
        "env": "inverted_double_pendulum",
        "backend": "spring",
        "episode": 150,
        "truncations": [1, 3, 10, 30, 150],
        "iterations": 60,
        "batch": 8,
        "seeds": 8,
        "lr": 3e-3,
        "policy": "mlp",
        "layers": 2,
        "action_noise": 0.1,
        "eval_every": 10,
        "eval_episodes": 32,
    },
    "paper": {
        "env": "ant",
        "backend": "generalized",
        "episode": 400,
        "truncations": [1, 5, 10, 20, 50, 400],
        "iterations": 300,
        "batch": 32,
        "seeds": 5,
        "lr": 1e-3,
        "policy": "paper",
        "layers": 4,
        "action_noise": 1.0,
        "eval_every": 20,
        "eval_episodes": 32,
    },
}
# the key of the training seeds (initial policies, training episodes)
SEED = 0
# the key of the held-out evaluation episodes (reset state and action noise), the same for
# every t and seed; training episodes come from the seeds' own keys
EVAL_KEY = 12345


def truncated_loss(system, theta, key, steps: int, every: int):
    """The episode's meta-loss with ``jax.lax.stop_gradient`` on the state every ``every``
    steps: its value is the full loss, its gradient the truncated-backprop gradient."""
    state = system.init(split_run_key(key)[0], theta)

    def window(s, w):
        s, losses = pure_unroll(system, theta, key, every, state=lax.stop_gradient(s), t0=w * every)
        return s, losses

    _, losses = lax.scan(window, state, jnp.arange(steps // every))
    return meta_loss_of(system, losses.reshape(-1))


def eval_keys(size: dict) -> jax.Array:
    """The keys of the held-out evaluation episodes (the same for every t and seed)."""
    return jax.random.split(jax.random.PRNGKey(EVAL_KEY), size["eval_episodes"])


def _trainer(system, size: dict, every: int):
    """``(init, chunk, reward)``: ``init(θ) -> carry``; ``chunk(carry, key, i0) -> carry,
    record``
    runs Adam steps i0 … i0 + eval_every − 1 on the batch mean of the truncated episode loss
    (step i draws ``batch`` fresh episodes from ``fold_in(key, i)``), then scores the policy
    on the evaluation episodes. A step whose gradient is not finite leaves θ and Adam's state
    as they were and is counted (``ok`` false), never zeroed. ``reward(θ)`` is the held-out
    score alone (mean reward per step over the evaluation episodes). One compile per t."""
    opt = optax.adam(size["lr"])
    episode, batch, n_it = size["episode"], size["batch"], size["eval_every"]
    ekeys = eval_keys(size)

    def batch_loss(th, keys):
        return jnp.mean(jax.vmap(lambda k: truncated_loss(system, th, k, episode, every))(keys))

    def reward(th):
        # −loss of the whole episode (its value does not depend on the truncation)
        losses = jax.vmap(lambda k: truncated_loss(system, th, k, episode, episode))(ekeys)
        return -jnp.mean(losses)

    vg = jax.value_and_grad(batch_loss)

    def adam_step(th, os, key, i):
        loss, g = vg(th, jax.random.split(jax.random.fold_in(key, i), batch))
        norm = optax.tree_utils.tree_norm(g)
        ok = jnp.isfinite(norm)
        upd, os_new = opt.update(g, os, th)
        th_new = optax.apply_updates(th, upd)

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

        return (keep(th_new, th), keep(os_new, os)), (loss, norm, ok)

    @jax.jit
    def chunk(carry, key, i0):
        def body(c, i):
            return adam_step(c[0], c[1], key, i)

        carry, (loss, norm, ok) = lax.scan(body, carry, i0 + jnp.arange(n_it))
        return carry, (loss, norm, ok, reward(carry[0]))

    def init(th):
        return th, opt.init(th)

    return init, chunk, jax.jit(reward)


def _train(system, theta, size: dict, every: int, key, trainer=None, on_chunk=None) -> dict:
    """Train one seed: ``iterations`` Adam steps in chunks of ``eval_every``, the policy scored
    on the evaluation episodes before training and after every chunk. Returns per-step
    ``loss``, ``grad_norm`` and ``ok`` (finite gradient, update applied), and ``eval_reward``
    at iterations 0, eval_every, … (``iterations / eval_every + 1`` values)."""
    init, chunk, reward = trainer or _trainer(system, size, every)
    carry = init(theta)
    rewards = [float(reward(theta))]
    losses, norms, oks = [], [], []
    for c in range(size["iterations"] // size["eval_every"]):
        carry, (loss, norm, ok, r) = chunk(carry, key, c * size["eval_every"])
        losses.append(np.asarray(loss))
        norms.append(np.asarray(norm))
        oks.append(np.asarray(ok))
        rewards.append(float(r))
        if on_chunk is not None:
            on_chunk()
    return {
        "loss": np.concatenate(losses),
        "grad_norm": np.concatenate(norms),
        "ok": np.concatenate(oks),
        "eval_reward": np.asarray(rewards),
    }


def make_system(size):
    """The environment under its policy (quick: a tanh MLP plus Gaussian action noise; paper:
    the paper's swish MLP sampling its tanh-Normal), loss −reward."""
    return systems.make(
        "brax",
        env=size["env"],
        backend=size["backend"],
        policy=size["policy"],
        hidden=32,
        layers=size["layers"],
        seed=0,
        loss="reward",
        action_noise=size["action_noise"],
        horizon=size["episode"],
    )


def check_size(size: dict) -> None:
    """Every truncation length divides the episode and the evaluation interval divides the
    iterations; otherwise an InputError naming the values."""
    from chaosgrad.errors import InputError

    bad = [t for t in size["truncations"] if size["episode"] % int(t)]
    if bad:
        raise InputError(
            f"truncation lengths {bad} do not divide the {size['episode']}-step "
            "episode; accepted: divisors of the episode length"
        )
    if size["iterations"] % size["eval_every"]:
        raise InputError(
            f"eval_every={size['eval_every']} does not divide iterations={size['iterations']}"
        )


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Train ``seeds`` policies per truncation length; per seed the loss and gradient norm of
    every Adam step and the evaluation reward every ``eval_every`` steps."""
    from chaosgrad.progress import progress_bar
    from chaosgrad.systems.brax import init_policy

    size = SIZES[scale]
    check_size(size)
    system = make_system(size)
    sizes_, scale_ = system.metadata["policy_sizes"], system.metadata["policy_scale"]
    dtype = jax.tree_util.tree_leaves(system.theta)[0].dtype
    key = jax.random.PRNGKey(SEED)
    chunks = size["iterations"] // size["eval_every"]
    out = {
        "truncations": np.asarray(size["truncations"]),
        "eval_iterations": np.arange(chunks + 1) * size["eval_every"],
    }
    with progress_bar(
        len(size["truncations"]) * size["seeds"] * chunks,
        "figure truncation",
        progress,
        min_total=1,
    ) as bar:
        for t in size["truncations"]:
            trainer = _trainer(system, size, int(t))  # compiles at its first call only
            runs = []
            for sd in range(size["seeds"]):
                # seed sd: its own initial policy and training episodes, the same for every t
                k = jax.random.fold_in(key, sd)
                theta0 = init_policy(jax.random.fold_in(k, 1), sizes_, scale_, dtype)
                done = []

                def train(t=t, k=k, th=theta0, done=done, trainer=trainer):
                    return _train(
                        system,
                        th,
                        size,
                        int(t),
                        jax.random.fold_in(k, 2),
                        trainer,
                        on_chunk=lambda: (done.append(1), bar.update(1)),
                    )

                runs.append(store.part(f"t{t}-s{sd}", train))
                if not done:
                    bar.skip(chunks)  # saved by an earlier run (or another process's part)
            for name in ("loss", "grad_norm", "ok", "eval_reward"):
                out[f"{name}_{t}"] = np.stack([r[name] for r in runs])
    meta = {
        "sizes": size,
        "system": system.describe(),
        "seed": SEED,
        "eval_key": EVAL_KEY,
        "note": f"Adam on the mean −reward over {size['batch']} fresh episodes per step; "
        "gradient stopped every t steps; per seed its own initial policy and "
        "training episodes, the same for every t; every policy scored (mean "
        f"reward per step) on the same {size['eval_episodes']} held-out episodes "
        f"every {size['eval_every']} steps",
        "summary": summary(out, size),
    }
    meta["verdict"] = verdict(meta["summary"], out, size)
    return out, meta


def summary(out: dict, size: dict) -> dict:
    """Per truncation: the final evaluation reward (mean over seeds, 95% t interval), its
    paired difference to no truncation (the same seeds, initial policies and episodes), the
    gradient norms and the skipped (non-finite) steps."""
    from chaosgrad.stats import mean_interval

    ts = [int(t) for t in size["truncations"]]
    full = max(ts)
    base = np.asarray(out[f"eval_reward_{full}"], np.float64)[:, -1]
    res = {}
    for t in ts:
        ev = np.asarray(out[f"eval_reward_{t}"], np.float64)
        final = ev[:, -1]
        iv = mean_interval(final)
        diff = mean_interval(final - base)
        norms = np.asarray(out[f"grad_norm_{t}"], np.float64)
        finite = norms[np.isfinite(norms)]
        res[str(t)] = {
            "final_reward": iv.value,
            "low": iv.low,
            "high": iv.high,
            "initial_reward": float(np.mean(ev[:, 0])),
            "per_seed": [float(x) for x in final],
            "gain": float(np.mean(final - ev[:, 0])),
            "minus_full": diff.value,
            "minus_full_low": diff.low,
            "minus_full_high": diff.high,
            "grad_norm_median": float(np.median(finite)) if finite.size else None,
            "grad_norm_max": float(np.max(finite)) if finite.size else None,
            "skipped": int(np.sum(~np.asarray(out[f"ok_{t}"], bool))),
            "nonfinite_losses": int(np.sum(~np.isfinite(out[f"loss_{t}"]))),
            "nonfinite_rewards": int(np.sum(~np.isfinite(ev))),
        }
    return res


def verdict(summ: dict, out: dict, size: dict) -> dict:
    """The paper's two claims, read off the saved runs: which t has the best final reward,
    whether its paired interval against no truncation lies wholly above 0, and whether
    training without truncation improved on the initial policy (its paired interval of
    final − initial lies wholly above 0). ``tied_with_best``: the other t whose paired
    interval against the best (the same seeds) does not lie wholly above 0 — the best is a
    winner only when this is empty."""
    from chaosgrad.stats import mean_interval

    ts = [int(t) for t in size["truncations"]]
    full = max(ts)
    ev = np.asarray(out[f"eval_reward_{full}"], np.float64)
    best = max(
        ts,
        key=lambda t: (
            summ[str(t)]["final_reward"] if np.isfinite(summ[str(t)]["final_reward"]) else -np.inf
        ),
    )
    gain = mean_interval(ev[:, -1] - ev[:, 0])
    top = np.asarray(summ[str(best)]["per_seed"], np.float64)
    tied = [
        t
        for t in ts
        if t != best
        and not mean_interval(top - np.asarray(summ[str(t)]["per_seed"], np.float64)).low > 0
    ]
    return {
        "best_t": best,
        "tied_with_best": tied,
        "best_above_full": bool(summ[str(best)]["minus_full_low"] > 0),
        "full_gain": gain.value,
        "full_gain_low": gain.low,
        "full_gain_high": gain.high,
        "full_improved": bool(gain.low > 0),
    }


def draw(results: dict, meta: dict, path) -> None:
    """(a) Held-out reward during training, mean over seeds with a 95% band, per t. (b) Final
    reward per t: each seed's policy (dots) and the mean with its 95% interval. (c) Gradient
    norm per Adam step: median over seeds, the band from the smallest to the largest."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import log_scale, save
    from chaosgrad.stats import mean_interval

    fig, (a, m, b) = plt.subplots(1, 3, figsize=(17, 4.8))
    z = meta["sizes"]
    ep = z["episode"]
    summ = meta["summary"]
    ts = [int(t) for t in results["truncations"]]
    its = np.asarray(results["eval_iterations"])

    def name(t):
        return f"{t} (none)" if t >= ep else str(t)

    for i, t in enumerate(ts):
        # the same 95% t interval over seeds as the summary's, at every evaluation
        ivs = [mean_interval(col) for col in np.asarray(results[f"eval_reward_{t}"]).T]
        mean = np.array([iv.value for iv in ivs])
        low = np.array([iv.low if np.isfinite(iv.low) else iv.value for iv in ivs])
        high = np.array([iv.high if np.isfinite(iv.high) else iv.value for iv in ivs])
        label = f"t = {name(t)}"
        if summ[str(t)]["skipped"]:
            label += f", {summ[str(t)]['skipped']} non-finite steps skipped"
        a.plot(its, mean, "o-", ms=3, color=f"C{i}", label=label)
        a.fill_between(its, low, high, color=f"C{i}", alpha=0.15)
        norms = np.asarray(results[f"grad_norm_{t}"], np.float64)
        with np.errstate(all="ignore"):
            it = np.arange(norms.shape[1])
            b.plot(it, np.nanmedian(norms, axis=0), color=f"C{i}", lw=1, label=f"t = {name(t)}")
            b.fill_between(
                it, np.nanmin(norms, axis=0), np.nanmax(norms, axis=0), color=f"C{i}", alpha=0.12
            )
        v = summ[str(t)]
        jitter = np.linspace(-0.15, 0.15, len(v["per_seed"]))
        m.plot(i + jitter, v["per_seed"], ".", color=f"C{i}", alpha=0.5, ms=6)
        m.errorbar(
            i,
            v["final_reward"],
            yerr=[[v["final_reward"] - v["low"]], [v["high"] - v["final_reward"]]],
            fmt="o",
            color="k",
            capsize=5,
            ms=6,
        )
    log_scale(
        b,
        np.concatenate([np.asarray(results[f"grad_norm_{t}"]).ravel() for t in ts]),
        "y",
        "gradient norms",
    )
    start = np.mean([summ[str(t)]["initial_reward"] for t in ts])
    for ax in (a, m):
        ax.axhline(start, color="0.5", ls="--", lw=0.8)
    m.text(
        len(ts) - 0.5, start, "initial policies", fontsize=8, color="0.4", ha="right", va="bottom"
    )
    m.set_xticks(range(len(ts)), [name(t) for t in ts])
    m.set_xlim(-0.5, len(ts) - 0.5)
    m.set_xlabel("gradient stopped every t steps")
    m.set_ylabel("held-out reward of the final policy")
    n_seeds = np.asarray(results[f"eval_reward_{ts[0]}"]).shape[0]
    m.set_title(
        f"(b) after {z['iterations']} Adam steps: seeds (dots), mean and 95% "
        f"interval over {n_seeds} seeds",
        fontsize=10,
    )
    a.set_xlabel("Adam step")
    a.set_ylabel(f"mean reward per step, {z['eval_episodes']} held-out episodes")
    a.set_title(
        f"(a) training with {z['batch']} episodes per step; mean and 95% band over seeds",
        fontsize=10,
    )
    a.legend(fontsize=7, framealpha=0.9)
    b.set_xlabel("Adam step")
    b.set_ylabel("‖gradient‖ of the batch loss")
    b.set_title("(c) gradient norm: median over seeds, band min–max", fontsize=10)
    b.legend(fontsize=7, framealpha=0.9)
    for ax in (a, m, b):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"Brax {z['env']} ({z.get('backend', 'generalized')} backend): truncated "
        f"backprop through {ep}-step episodes",
        fontsize=11,
    )
    fig.tight_layout()
    save(fig, path)
