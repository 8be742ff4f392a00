"""A user's own system: a 2-layer tanh RNN trained by minibatch gradient descent.

θ = {"log_lr": log of the inner learning rate}; the state is a dict pytree (the RNN's
weights and the step count). Tiny sizes so a diagnose of it takes seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad import StepOut, System


def tanh_rnn_gd(
    lr: float = 0.1,
    hidden: int = 4,
    length: int = 3,
    batch: int = 8,
    horizon: int = 100,
    scale: float = 3.0,
    dtype: str = "float64",
) -> System:
    """Inner training of y = w_out · h_T, h_t = tanh(W2 tanh(W1 h + U x_t)) by GD on a
    fixed random regression task (targets from a random teacher)."""
    dt = jnp.dtype(dtype)
    rng = np.random.default_rng(123)  # the same task in either precision
    x64 = rng.normal(size=(64, length, 2))
    data_x = jnp.asarray(x64, dt)
    data_y = jnp.asarray(scale * np.tanh(x64.sum(1) @ rng.normal(size=2)), dt)

    def forward(p, x):
        h1 = jnp.zeros((x.shape[0], hidden), dt)
        h2 = jnp.zeros((x.shape[0], hidden), dt)
        for t in range(length):
            h1 = jnp.tanh(h1 @ p["W1"] + x[:, t] @ p["U"])
            h2 = jnp.tanh(h2 @ p["W2"] + h1 @ p["V"])
        return h2 @ p["w"]

    def loss_fn(p, x, y):
        return jnp.mean((forward(p, x) - y) ** 2)

    def init(key, theta):
        ks = jax.random.split(key, 5)
        s = 1.0 / jnp.sqrt(hidden)
        return {
            "W1": s * jax.random.normal(ks[0], (hidden, hidden), dt),
            "U": jax.random.normal(ks[1], (2, hidden), dt) / jnp.sqrt(2.0),
            "W2": s * jax.random.normal(ks[2], (hidden, hidden), dt),
            "V": s * jax.random.normal(ks[3], (hidden, hidden), dt),
            "w": s * jax.random.normal(ks[4], (hidden,), dt),
        }

    def step(p, theta, key):
        idx = jax.random.randint(key, (batch,), 0, data_x.shape[0])
        x, y = data_x[idx], data_y[idx]
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        lr_ = jnp.exp(theta["log_lr"])
        return jax.tree_util.tree_map(lambda a, b: a - lr_ * b, p, g), StepOut(loss=loss)

    return System(
        init,
        step,
        name="user_rnn",
        theta={"log_lr": jnp.log(jnp.asarray(lr, dt))},
        horizon=horizon,
        precision=str(dt),
        description=f"tanh RNN trained by GD, lr = {lr}, {dtype}",
    )
