"""A family of small inner tasks for meta-training learned optimizers: MLPs on scikit-learn's
bundled datasets and on generated problems, a conv net on 8×8 digits, quadratics, an RNN.

Every member is one of `N_MEMBERS` described configurations (`members`), each in a fixed
split, "meta_train" or "held_out", decided by a hash of its name (`split_of`), so the split
is the same in every process and never depends on a key. `family_task(split)` is one `Task`
whose ``sample(key)`` draws a member of that split.

One compiled program serves every member. Particles are vmapped, and a ``lax.switch`` over a
batched index runs every branch, so the family is padded: the parameters hold one slot per
kind (mlp, conv, quad, rnn), each padded to the largest member of its kind, and a 0/1
``mask`` (a pytree shaped like the parameters) marks the live entries. The loss multiplies
the parameters by the mask, masks dead hidden units and dead classes (logit −1e9, whose
softmax weight is exactly 0), and bypasses absent layers, so a padded member computes exactly
the loss and gradient of the unpadded network (tests/test_family.py checks it); the lopt
step multiplies every update by the mask, so dead entries stay 0. Per-tensor learned
optimizers normalise over the live entries only (`StepInfo.mask`), and see one extra, dead
tensor per absent slot, which does not touch the others.

Cost of the padding (2-core CPU, batch 32, Adam, one particle): see `docs/lopt_family.md`.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from chaosgrad.systems.lopt.tasks import Task

from chaosgrad.errors import InputError, require

KINDS = ("mlp", "conv", "quad", "rnn")
SPLITS = ("meta_train", "held_out", "all")
HELD_OUT_FRACTION = 0.2
ACTIVATIONS = ("relu", "tanh", "gelu")

# padded sizes
FEATURES = 64  # inputs (digits' 8×8 pixels are the widest)
CLASSES = 10
WIDTH = 32  # MLP hidden units
DEPTH = 2  # MLP hidden layers
CHANNELS = 8  # conv channels
QDIM = 16  # quadratic dimension
RNN_HIDDEN = 16
SEQ_LEN = 8
DEAD_LOGIT = -1e9  # exp(−1e9 − max) is exactly 0 in float32 and float64

# generated problems: (name, features, classes (0: regression), numpy seed)
GENERATED = (
    ("blobs2", 2, 2, 11),
    ("blobs8", 8, 3, 12),
    ("blobs16", 16, 5, 13),
    ("blobs32", 32, 4, 14),
    ("teacher1", 1, 0, 21),
    ("teacher4", 4, 0, 22),
    ("teacher16", 16, 0, 23),
)
GENERATED_SIZE = 600
VALID_FRACTION = 0.2


# -- data ----------------------------------------------------------------------------------------
def _standardise(x_train: np.ndarray, x: np.ndarray) -> np.ndarray:
    mu, sd = x_train.mean(0), x_train.std(0)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def _blobs(features: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters (two per class) seen through a random linear map, plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (2 * classes, features))
    lab = rng.integers(0, 2 * classes, GENERATED_SIZE)
    x = centres[lab] + rng.normal(0, 1, (GENERATED_SIZE, features))
    x = x @ rng.normal(0, 1, (features, features)) / np.sqrt(features)
    return x, (lab % classes).astype(np.int32)


def _teacher(features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y = a random tanh network of x (16 hidden units) plus 10% noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (GENERATED_SIZE, features))
    w1 = rng.normal(0, 2 / np.sqrt(features), (features, 16))
    y = np.tanh(x @ w1 + rng.normal(0, 0.5, 16)) @ rng.normal(0, 1, 16)
    y = y + 0.1 * y.std() * rng.normal(0, 1, GENERATED_SIZE)
    return x, y


@functools.lru_cache(maxsize=1)
def datasets() -> dict:
    """Every dataset of the family, padded to `FEATURES` columns and stacked.

    Returns ``{"x": (rows, 64), "y": int labels, "t": regression targets, "info": {name:
    (train_start, n_train, valid_start, n_valid, features, classes)}}``. The scikit-learn
    sets ship with the package (no download); the generated ones come from fixed numpy
    seeds. Each set is split train/valid by a fixed permutation (seed 0), standardised with
    its training statistics (digits: pixels / 16, so the conv net sees images).
    """
    sk = require("sklearn.datasets", "lopt")
    raw = {}
    for name, loader in (
        ("digits", sk.load_digits),
        ("wine", sk.load_wine),
        ("breast_cancer", sk.load_breast_cancer),
        ("iris", sk.load_iris),
    ):
        d = loader()
        raw[name] = (d.data.astype(np.float64), d.target.astype(np.int32), int(d.target.max()) + 1)
    for name, f, c, seed in GENERATED:
        x, y = _blobs(f, c, seed) if c else _teacher(f, seed)
        raw[name] = (x, y, c)

    xs, ys, ts, info, row = [], [], [], {}, 0
    for name, (x, y, c) in raw.items():
        perm = np.random.default_rng(0).permutation(len(x))
        n_valid = int(round(VALID_FRACTION * len(x)))
        tr, va = perm[n_valid:], perm[:n_valid]
        x = x / 16.0 if name == "digits" else _standardise(x[tr], x)
        if c == 0:
            y = _standardise(y[tr], y)
        for idx in (tr, va):
            pad = np.zeros((len(idx), FEATURES))
            pad[:, : x.shape[1]] = x[idx]
            xs.append(pad)
            ys.append(y[idx].astype(np.int32) if c else np.zeros(len(idx), np.int32))
            ts.append(np.zeros(len(idx)) if c else y[idx])
        info[name] = (row, len(tr), row + len(tr), len(va), x.shape[1], c)
        row += len(x)
    return {
        "x": np.concatenate(xs),
        "y": np.concatenate(ys),
        "t": np.concatenate(ts),
        "info": info,
    }


DATASETS = ("digits", "wine", "breast_cancer", "iris") + tuple(g[0] for g in GENERATED)


# -- the described members ---------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def members() -> tuple[dict, ...]:
    """The family's members, in a fixed order: member i is ``members()[i]``, a dict with its
    ``name``, ``kind`` and the sizes of its kind (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for ds in DATASETS:
        for width in (8, 16, 32):
            for depth in (1, 2):
                for act in ACTIVATIONS:
                    out.append(
                        {
                            "kind": "mlp",
                            "name": f"mlp/{ds}/w{width}/d{depth}/{act}",
                            "dataset": ds,
                            "width": width,
                            "depth": depth,
                            "activation": act,
                        }
                    )
    for channels in (4, 8):
        for act in ("relu", "tanh"):
            out.append(
                {
                    "kind": "conv",
                    "name": f"conv/digits/c{channels}/{act}",
                    "dataset": "digits",
                    "channels": channels,
                    "activation": act,
                }
            )
    for dim in (4, 8, 16):
        for cond in (1, 10, 100, 1000):
            for noise in (0.0, 0.1):
                out.append(
                    {
                        "kind": "quad",
                        "name": f"quad/d{dim}/k{cond}/n{noise}",
                        "dim": dim,
                        "condition": float(cond),
                        "noise": noise,
                    }
                )
    for hidden in (8, 16):
        for decay in (0.5, 0.8, 0.95):
            out.append(
                {
                    "kind": "rnn",
                    "name": f"rnn/memory/h{hidden}/a{decay}",
                    "hidden": hidden,
                    "decay": decay,
                }
            )
    return tuple(out)


N_MEMBERS = 11 * 3 * 2 * 3 + 4 + 24 + 6


def _hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


@functools.lru_cache(maxsize=1)
def _held_out() -> frozenset[str]:
    by_kind: dict[str, list[str]] = {}
    for m in members():
        by_kind.setdefault(m["kind"], []).append(m["name"])
    out = set()
    for names in by_kind.values():
        n = max(1, round(HELD_OUT_FRACTION * len(names)))
        out.update(sorted(names, key=_hash)[:n])
    return frozenset(out)


def split_of(name: str) -> str:
    """The fixed split of the member called ``name``. Within each kind, the members are
    ranked by the SHA-256 of their names and the first fifth (`HELD_OUT_FRACTION`, at least
    one) are "held_out"; the rest are "meta_train". No key or process state enters."""
    if name not in {m["name"] for m in members()}:
        raise InputError(f"no family member is called {name!r}")
    return "held_out" if name in _held_out() else "meta_train"


def split_indices(split: str) -> tuple[int, ...]:
    """Indices (into `members`) of the members of ``split`` ("meta_train", "held_out" or
    "all"), in increasing order."""
    if split not in SPLITS:
        raise InputError(f"split {split!r} is not accepted: use one of {SPLITS}")
    return tuple(
        i for i, m in enumerate(members()) if split == "all" or split_of(m["name"]) == split
    )


def list_tasks(split: str = "all") -> list[dict]:
    """The members of ``split`` as dicts: ``index``, ``split`` and the member's description."""
    return [
        dict(index=i, split=split_of(members()[i]["name"]), **members()[i])
        for i in split_indices(split)
    ]


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, np.ndarray]:
    """Per-member numbers, one array each, indexed by member."""
    info = datasets()["info"]
    cols: dict[str, list] = {
        k: []
        for k in (
            "kind",
            "train_start",
            "n_train",
            "valid_start",
            "n_valid",
            "features",
            "classes",
            "width",
            "depth",
            "activation",
            "channels",
            "qdim",
            "condition",
            "noise",
            "rnn_hidden",
            "decay",
        )
    }
    for m in members():
        ds = info.get(m.get("dataset", "digits"))
        row = {
            "kind": KINDS.index(m["kind"]),
            "train_start": ds[0],
            "n_train": ds[1],
            "valid_start": ds[2],
            "n_valid": ds[3],
            "features": ds[4],
            "classes": ds[5],
            "width": m.get("width", 1),
            "depth": m.get("depth", 1),
            "activation": ACTIVATIONS.index(m.get("activation", "relu")),
            "channels": m.get("channels", 1),
            "qdim": m.get("dim", 1),
            "condition": m.get("condition", 1.0),
            "noise": m.get("noise", 0.0),
            "rnn_hidden": m.get("hidden", 1),
            "decay": m.get("decay", 0.5),
        }
        for k, v in row.items():
            cols[k].append(v)
    return {
        k: np.asarray(v, np.float64 if k in ("condition", "noise", "decay") else np.int32)
        for k, v in cols.items()
    }


def member_consts(index, key: jax.Array, dtype=jnp.float32) -> dict:
    """The constants of member ``index`` (an int or int array): its row of the table, and
    for quadratics a Haar rotation and a minimiser drawn from ``key`` (eigenvalues fixed at
    κ^(−i/(d−1)), so the condition number is exactly κ)."""
    tab = _table()
    idx = jnp.asarray(index, jnp.int32)
    c = {k: jnp.asarray(v)[idx] for k, v in tab.items()}
    for k in ("condition", "noise", "decay"):
        c[k] = c[k].astype(dtype)
    c["index"] = idx
    kq, kx = jax.random.split(key)
    live = jnp.arange(QDIM) < c["qdim"]
    block = live[:, None] & live[None, :]
    # a Haar rotation of the live block; the dead coordinates stay decoupled (the QR of a
    # block-diagonal matrix is block diagonal, and the identity block stays the identity)
    g = jnp.where(block, jax.random.normal(kq, (QDIM, QDIM), dtype), jnp.eye(QDIM, dtype=dtype))
    q, r = jnp.linalg.qr(g)
    q = q * jnp.sign(jnp.diagonal(r))
    frac = jnp.arange(QDIM, dtype=dtype) / jnp.maximum(c["qdim"] - 1, 1).astype(dtype)
    h = jnp.where(live, c["condition"] ** (-frac), 0.0)
    c["hessian"] = (q * h) @ q.T
    c["minimum"] = jnp.where(live, jax.random.normal(kx, (QDIM,), dtype), 0.0)
    return c


# -- parameters and masks ----------------------------------------------------------------------
def _lt(n, size):
    return (jnp.arange(size) < n).astype(jnp.float32)


def mask(consts: dict, dtype=jnp.float32) -> dict:
    """The 0/1 mask of live parameters of the member ``consts`` (shaped like its params)."""
    kind = consts["kind"]
    on = [(kind == i).astype(dtype) for i in range(len(KINDS))]
    f_in, w, d = _lt(consts["features"], FEATURES), _lt(consts["width"], WIDTH), consts["depth"]
    n_out = jnp.maximum(consts["classes"], 1)
    cls = _lt(n_out, CLASSES)
    mlp = [{"w": jnp.outer(f_in, w), "b": w}]
    for layer in range(1, DEPTH):
        live = (d > layer).astype(dtype)
        mlp.append({"w": jnp.outer(w, w) * live, "b": w * live})
    mlp.append({"w": jnp.outer(w, cls), "b": cls})
    ch = _lt(consts["channels"], CHANNELS)
    conv = {
        "k1": jnp.broadcast_to(ch, (3, 3, 1, CHANNELS)),
        "b1": ch,
        "k2": jnp.broadcast_to(jnp.outer(ch, ch), (3, 3, CHANNELS, CHANNELS)),
        "b2": ch,
        "w": jnp.broadcast_to(ch[:, None], (CHANNELS, CLASSES)),
        "b": jnp.ones((CLASSES,)),
    }
    r = _lt(consts["rnn_hidden"], RNN_HIDDEN)
    rnn = {"wx": r[None, :], "wh": jnp.outer(r, r), "b": r, "wo": r[:, None], "bo": jnp.ones((1,))}
    tree = {"mlp": mlp, "conv": conv, "quad": _lt(consts["qdim"], QDIM), "rnn": rnn}
    return {
        k: jax.tree_util.tree_map(lambda m, s=s: (m * s).astype(dtype), v)
        for (k, v), s in zip(tree.items(), on, strict=True)
    }


def init_params(key: jax.Array, consts: dict, dtype=jnp.float32) -> dict:
    """LeCun-normal weights (fan-in = the member's live fan-in), zero biases, masked."""
    ks = iter(jax.random.split(key, 16))

    def w(shape, fan_in):
        scale = 1.0 / jnp.sqrt(jnp.maximum(fan_in, 1).astype(dtype))
        return jax.random.normal(next(ks), shape, dtype) * scale

    z = functools.partial(jnp.zeros, dtype=dtype)
    width, ch, rh = consts["width"], consts["channels"], consts["rnn_hidden"]
    mlp = [{"w": w((FEATURES, WIDTH), consts["features"]), "b": z((WIDTH,))}]
    mlp += [{"w": w((WIDTH, WIDTH), width), "b": z((WIDTH,))} for _ in range(1, DEPTH)]
    mlp.append({"w": w((WIDTH, CLASSES), width), "b": z((CLASSES,))})
    conv = {
        "k1": w((3, 3, 1, CHANNELS), 9),
        "b1": z((CHANNELS,)),
        "k2": w((3, 3, CHANNELS, CHANNELS), 9 * ch),
        "b2": z((CHANNELS,)),
        "w": w((CHANNELS, CLASSES), ch),
        "b": z((CLASSES,)),
    }
    rnn = {
        "wx": w((1, RNN_HIDDEN), 1),
        "wh": w((RNN_HIDDEN, RNN_HIDDEN), rh),
        "b": z((RNN_HIDDEN,)),
        "wo": w((RNN_HIDDEN, 1), rh),
        "bo": z((1,)),
    }
    quad = jax.random.normal(next(ks), (QDIM,), dtype)
    params = {"mlp": mlp, "conv": conv, "quad": quad, "rnn": rnn}
    return jax.tree_util.tree_map(jnp.multiply, params, mask(consts, dtype))


# -- losses --------------------------------------------------------------------------------------
def _activation(index, x):
    return jax.lax.switch(index, [jax.nn.relu, jnp.tanh, jax.nn.gelu], x)


def _classify_or_regress(out, consts, y, t):
    """Softmax cross-entropy over the live classes, or the squared error of output 0."""
    live = jnp.arange(CLASSES) < consts["classes"]
    logits = jnp.where(live, out, DEAD_LOGIT)
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
    return jnp.where(consts["classes"] > 0, jnp.mean(ce), jnp.mean((out[:, 0] - t) ** 2))


def _rows(consts, batch, data):
    valid = batch["valid"]
    start = jnp.where(valid, consts["valid_start"], consts["train_start"])
    n = jnp.where(valid, consts["n_valid"], consts["n_train"])
    idx = start + jnp.minimum((batch["u"] * n).astype(jnp.int32), n - 1)
    return data["x"][idx], data["y"][idx], data["t"][idx]


def _mlp_loss(p, consts, batch, data):
    x, y, t = _rows(consts, batch, data)
    w = _lt(consts["width"], WIDTH).astype(x.dtype)
    h = x
    for layer, lp in enumerate(p[:-1]):
        a = _activation(consts["activation"], h @ lp["w"] + lp["b"]) * w
        h = a if layer == 0 else jnp.where(consts["depth"] > layer, a, h)
    return _classify_or_regress(h @ p[-1]["w"] + p[-1]["b"], consts, y, t)


def _conv_loss(p, consts, batch, data):
    x, y, t = _rows(consts, batch, data)
    img = x.reshape(-1, 8, 8, 1)
    ch = _lt(consts["channels"], CHANNELS).astype(x.dtype)

    def conv(h, k, b):
        dn = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(h, k, (1, 1), "SAME", dimension_numbers=dn) + b

    act = jnp.where(consts["activation"] == 0, 0, 1)
    h = _activation(act, conv(img, p["k1"], p["b1"])) * ch
    h = h.reshape(-1, 4, 2, 4, 2, CHANNELS).mean((2, 4))  # 2×2 average pooling
    h = _activation(act, conv(h, p["k2"], p["b2"])) * ch
    out = h.mean((1, 2)) @ p["w"] + p["b"]
    return _classify_or_regress(out, consts, y, t)


def _quad_loss(x, consts, batch, data):
    shift = jnp.where(batch["valid"], 0.0, consts["noise"]) * batch["c"]
    d = (x - consts["minimum"] - shift) * _lt(consts["qdim"], QDIM).astype(x.dtype)
    return 0.5 * d @ consts["hessian"] @ d


def _rnn_loss(p, consts, batch, data):
    """Recall a decaying sum: y = √(1−a²) Σ_t a^(L−1−t) z_t from the sequence z_1 … z_L."""
    z = batch["z"]
    a = consts["decay"]
    r = _lt(consts["rnn_hidden"], RNN_HIDDEN).astype(z.dtype)
    y = jnp.sqrt(1 - a**2) * z @ (a ** jnp.arange(SEQ_LEN - 1, -1, -1).astype(z.dtype))

    def cell(h, zt):
        return jnp.tanh(zt[:, None] * p["wx"] + h @ p["wh"] + p["b"]) * r, None

    h, _ = jax.lax.scan(cell, jnp.zeros((z.shape[0], RNN_HIDDEN), z.dtype), z.T)
    return jnp.mean(((h @ p["wo"] + p["bo"])[:, 0] - y) ** 2)


def family_loss(params, consts, batch, data, kinds=KINDS) -> jax.Array:
    """The loss of member ``consts`` at ``params`` (masked) on ``batch``. Only the branches
    of ``kinds`` are built (a member of another kind gets loss 0): under vmap every branch
    runs, and each kind adds to the compile time."""
    p = jax.tree_util.tree_map(jnp.multiply, params, mask(consts, batch["u"].dtype))
    losses = {"mlp": _mlp_loss, "conv": _conv_loss, "quad": _quad_loss, "rnn": _rnn_loss}
    branches = [
        (lambda k=k: losses[k](p[k], consts, batch, data))
        if k in kinds
        else (lambda: jnp.zeros((), batch["u"].dtype))
        for k in KINDS
    ]
    return jax.lax.switch(consts["kind"], branches)


def parse_kinds(kinds) -> tuple[str, ...]:
    """``kinds`` as a tuple of `KINDS`: "all", a comma-separated string or a sequence."""
    if isinstance(kinds, str):
        kinds = KINDS if kinds == "all" else tuple(k.strip() for k in kinds.split(","))
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise InputError(f"kinds {kinds!r} are not accepted: use 'all' or some of {KINDS}")
    return tuple(k for k in KINDS if k in kinds)


def family_task(
    split: str = "meta_train", batch_size: int = 32, dtype=jnp.float32, kinds="all"
) -> Task:
    """The family as one `Task` whose ``sample(key)`` draws a member of ``split`` uniformly
    (its constants: `member_consts`), with ``mask`` (the live parameters). ``kinds``
    restricts it to members of those kinds ("all", "mlp,quad", …): a smaller program that
    compiles faster. Measured on a loaded 2-core CPU, the jit of a vmapped meta-gradient
    through one inner SGD step took 33 s for the whole family against 8.8 s (mlp), 8.6 s
    (conv), 1.6 s (quad) and 4.4 s (rnn) for one kind alone."""
    kinds = parse_kinds(kinds)
    chosen = [i for i in split_indices(split) if members()[i]["kind"] in kinds]
    if not chosen:
        raise InputError(f"no member of split {split!r} has a kind in {kinds}")
    indices = jnp.asarray(chosen, jnp.int32)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise InputError(f"family batch_size must be >= 1, got {batch_size}")
    d = datasets()
    data = {
        "x": jnp.asarray(d["x"], dtype),
        "y": jnp.asarray(d["y"]),
        "t": jnp.asarray(d["t"], dtype),
    }

    def sample(key):
        ki, kc = jax.random.split(key)
        return member_consts(indices[jax.random.randint(ki, (), 0, len(indices))], kc, dtype)

    def init(key, consts):
        return init_params(key, consts, dtype)

    def loss(params, consts, batch):
        return family_loss(params, consts, batch, data, kinds)

    def batch(key, split_name):
        if split_name not in ("train", "valid"):
            raise InputError(f"split {split_name!r} is not accepted: use 'train' or 'valid'")
        ku, kz, kc = jax.random.split(key, 3)
        return {
            "u": jax.random.uniform(ku, (batch_size,), dtype),
            "z": jax.random.normal(kz, (batch_size, SEQ_LEN), dtype),
            "c": jax.random.normal(kc, (QDIM,), dtype),
            "valid": jnp.asarray(split_name == "valid"),
        }

    def mask_fn(consts):
        return mask(consts, dtype)

    return Task(
        "family",
        sample,
        init,
        loss,
        batch,
        None,
        f"task family, {len(indices)} members ({split}"
        + ("" if kinds == KINDS else f", kinds {','.join(kinds)}")
        + f"), batch {batch_size}",
        mask_fn,
    )
