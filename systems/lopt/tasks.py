"""Inner tasks a (learned) optimizer trains: random quadratics, an MLP on scikit-learn's
digits, a tiny MLP sinusoid regression. Each is a family: ``sample(key)`` draws one task.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from chaosgrad._types import PyTree
from chaosgrad.errors import InputError, require

SPLITS = ("train", "valid")


class Task(NamedTuple):
    """An inner task family, as pure functions (all jittable and vmappable).

    Attributes:
      name: short name.
      sample: ``sample(key) -> consts``, the constants of one task of the family (a pytree,
        e.g. a quadratic's Hessian); they are held fixed during inner training.
      init: ``init(key, consts) -> params``, initial inner parameters.
      loss: ``loss(params, consts, batch) -> scalar``, the loss on a batch.
      batch: ``batch(key, split) -> batch``, a minibatch from the split ("train"/"valid";
        ``split`` is a static Python string).
      accuracy: ``accuracy(params, consts, split) -> scalar`` on the whole split, for
        classifiers; None otherwise.
      description: one line.
      mask: ``mask(consts) -> pytree`` of 0/1 shaped like the params, the live entries of a
        padded task (the lopt step multiplies every update by it); None: all live.
    """

    name: str
    sample: Callable[[jax.Array], PyTree]
    init: Callable[[jax.Array, PyTree], PyTree]
    loss: Callable[[PyTree, PyTree, PyTree], jax.Array]
    batch: Callable[[jax.Array, str], PyTree]
    accuracy: Callable[[PyTree, PyTree, str], jax.Array] | None
    description: str
    mask: Callable[[PyTree], PyTree] | None = None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split {split!r} is not accepted: use one of {SPLITS}")


# -- quadratics --------------------------------------------------------------------------------
def quadratic(
    dim: int = 10,
    h_min: float = 0.1,
    h_max: float = 1.0,
    noise: float = 0.0,
    dtype=jnp.float32,
) -> Task:
    """Random quadratics ℓ(x) = ½ (x − x* − c)ᵀ H (x − x* − c), H = Q diag(h) Qᵀ.

    ``sample`` draws Q (Haar-orthogonal, by QR of a Gaussian), eigenvalues h log-uniform in
    [h_min, h_max] (sorted, largest first) and the minimiser x* ~ N(0, I). A batch is the
    target shift c ~ N(0, noise² I) ("train") or 0 ("valid"), so the gradient is
    H (x − x* − c) and gradient descent's one-step Jacobian is exactly I − ηH.
    Parameters start at x ~ N(0, I).
    """
    dim = int(dim)
    if dim < 1:
        raise InputError(f"quadratic needs dim >= 1, got {dim!r}")
    if not 0 < h_min <= h_max:
        raise InputError(f"quadratic needs 0 < h_min <= h_max, got {h_min!r}, {h_max!r}")

    def sample(key):
        kq, kh, kx = jax.random.split(key, 3)
        q, r = jnp.linalg.qr(jax.random.normal(kq, (dim, dim), dtype))
        q = q * jnp.sign(jnp.diagonal(r))  # Haar measure needs the sign fix
        u = jax.random.uniform(kh, (dim,), dtype)
        h = jnp.sort(jnp.exp(jnp.log(h_min) + u * (jnp.log(h_max) - jnp.log(h_min))))[::-1]
        return {
            "hessian": (q * h) @ q.T,
            "eigenvalues": h,
            "minimum": jax.random.normal(kx, (dim,), dtype),
        }

    def init(key, consts):
        return jax.random.normal(key, (dim,), dtype)

    def loss(x, consts, c):
        d = x - consts["minimum"] - c
        return 0.5 * d @ consts["hessian"] @ d

    def batch(key, split):
        _check_split(split)
        if split == "valid" or noise == 0:
            return jnp.zeros((dim,), dtype)
        return noise * jax.random.normal(key, (dim,), dtype)

    return Task(
        "quadratic",
        sample,
        init,
        loss,
        batch,
        None,
        f"random quadratic, dim={dim}, eigenvalues log-uniform in [{h_min}, {h_max}], "
        f"target noise {noise}",
    )


# -- multilayer perceptrons ---------------------------------------------------------------------
def mlp_init(key: jax.Array, sizes: tuple[int, ...], dtype) -> list[dict]:
    """Weights of an MLP with layer ``sizes`` (LeCun-normal weights, zero biases)."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b), dtype) / float(np.sqrt(a)), "b": jnp.zeros((b,), dtype)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp_apply(params: list[dict], x: jax.Array, activation=jax.nn.relu) -> jax.Array:
    """Apply the MLP ``params`` to ``x`` (activation between layers, linear output)."""
    for layer in params[:-1]:
        x = activation(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


@functools.lru_cache(maxsize=1)
def digits_data(valid_fraction: float = 0.2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8×8 digits (1,797 images, ships with the package), pixels scaled to
    [0, 1], split into train/valid by a fixed permutation (numpy seed 0).
    """
    load_digits = require("sklearn.datasets", "lopt").load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float64)
    y = data.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(y))
    n_valid = int(round(valid_fraction * len(y)))
    va, tr = perm[:n_valid], perm[n_valid:]
    return {"train": (x[tr], y[tr]), "valid": (x[va], y[va])}


def digits_mlp(hidden: int = 32, depth: int = 2, batch_size: int = 128, dtype=jnp.float32) -> Task:
    """A ReLU MLP (``depth`` hidden layers of ``hidden`` units) classifying 8×8 digits.

    Loss: mean softmax cross-entropy on a minibatch of ``batch_size`` images drawn with
    replacement from the split (1,438 train, 359 valid). The family has one member (the
    constants are empty): randomness is in the initial weights and the minibatches.
    """
    hidden, depth, batch_size = int(hidden), int(depth), int(batch_size)
    if hidden < 1 or depth < 0 or batch_size < 1:
        raise InputError(
            f"digits_mlp needs hidden >= 1, depth >= 0, batch_size >= 1; got "
            f"{hidden}, {depth}, {batch_size}"
        )
    data = {s: (jnp.asarray(x, dtype), jnp.asarray(y)) for s, (x, y) in digits_data().items()}
    sizes = (64,) + (hidden,) * depth + (10,)

    def sample(key):
        return {}

    def init(key, consts):
        return mlp_init(key, sizes, dtype)

    def loss(params, consts, batch):
        x, y = batch
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(mlp_apply(params, x), y))

    def batch(key, split):
        _check_split(split)
        x, y = data[split]
        idx = jax.random.randint(key, (batch_size,), 0, y.shape[0])
        return x[idx], y[idx]

    def accuracy(params, consts, split):
        _check_split(split)
        x, y = data[split]
        return jnp.mean(jnp.argmax(mlp_apply(params, x), axis=-1) == y)

    return Task(
        "digits_mlp",
        sample,
        init,
        loss,
        batch,
        accuracy,
        f"ReLU MLP {sizes} on sklearn digits, batch {batch_size}",
    )


def sine_mlp(hidden: int = 32, depth: int = 2, batch_size: int = 128, dtype=jnp.float32) -> Task:
    """A tanh MLP regressing a sinusoid y = a sin(x + φ) on x ~ U(−5, 5) (mean squared error).

    The family draws the amplitude a ~ U(0.1, 2) and phase φ ~ U(0, π) (as in MAML's
    sinusoid tasks). Inputs are drawn afresh for every batch, so "valid" differs from "train"
    only in its keys: it measures generalisation to unseen x.
    """
    hidden, depth, batch_size = int(hidden), int(depth), int(batch_size)
    if hidden < 1 or depth < 0 or batch_size < 1:
        raise InputError(
            f"sine_mlp needs hidden >= 1, depth >= 0, batch_size >= 1; got "
            f"{hidden}, {depth}, {batch_size}"
        )
    sizes = (1,) + (hidden,) * depth + (1,)

    def sample(key):
        ka, kp = jax.random.split(key)
        return {
            "amplitude": jax.random.uniform(ka, (), dtype, 0.1, 2.0),
            "phase": jax.random.uniform(kp, (), dtype, 0.0, np.pi),
        }

    def init(key, consts):
        return mlp_init(key, sizes, dtype)

    def loss(params, consts, x):
        y = consts["amplitude"] * jnp.sin(x + consts["phase"])
        return jnp.mean((mlp_apply(params, x, jnp.tanh) - y) ** 2)

    def batch(key, split):
        _check_split(split)
        return jax.random.uniform(
            jax.random.fold_in(key, split == "valid"), (batch_size, 1), dtype, -5.0, 5.0
        )

    return Task(
        "sine_mlp",
        sample,
        init,
        loss,
        batch,
        None,
        f"tanh MLP {sizes} regressing a sinusoid, batch {batch_size}",
    )


TASKS: dict[str, Callable[..., Task]] = {
    "quadratic": quadratic,
    "digits_mlp": digits_mlp,
    "sine_mlp": sine_mlp,
}


def make_task(name: str, **kwargs) -> Task:
    """Build the task family ``name`` (one of `TASKS`) with its keyword options."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; accepted: {', '.join(TASKS)}")
    return TASKS[name](**kwargs)
