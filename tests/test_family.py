"""The learned-optimizer task family: its fixed split, padded members equal to unpadded
networks, every estimator on the family system, the hierarchical optimizer's validation
input, and the Adam baselines (greedy ordered list on a hand-made case)."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from chaosgrad.systems.lopt import baselines, family
from chaosgrad.systems.lopt.tasks import mlp_apply

from chaosgrad import estimators, systems

KEY = jax.random.PRNGKey(0)
# the held-out members, recorded: a change to the family or its split must show here
HELD_OUT_COUNT = 47
HELD_OUT_DIGEST = "94881068a82f392e"  # sha256 of the held-out names, one a line


def _names(split):
    return [family.members()[i]["name"] for i in family.split_indices(split)]


def test_split_is_fixed_and_covers_every_kind():
    held, train = family.split_indices("held_out"), family.split_indices("meta_train")
    assert len(held) == HELD_OUT_COUNT and len(held) + len(train) == family.N_MEMBERS
    assert not set(held) & set(train)
    digest = hashlib.sha256("\n".join(_names("held_out")).encode()).hexdigest()[:16]
    assert digest == HELD_OUT_DIGEST
    for kind in family.KINDS:
        assert {t["split"] for t in family.list_tasks() if t["kind"] == kind} == {
            "meta_train",
            "held_out",
        }
    assert [t["index"] for t in family.list_tasks("held_out")] == list(held)


def test_meta_train_sampler_never_draws_a_held_out_member():
    tk = family.family_task("meta_train", batch_size=2)
    idx = np.asarray(
        jax.jit(jax.vmap(lambda k: tk.sample(k)["index"]))(jax.random.split(KEY, 4000))
    )
    assert not set(idx.tolist()) & set(family.split_indices("held_out"))
    assert len(set(idx.tolist())) > 0.9 * len(family.split_indices("meta_train"))


# -- padded members against unpadded networks, float64 -------------------------------------------
def _member(name):
    return next(i for i, m in enumerate(family.members()) if m["name"] == name)


def _ce_or_mse(out, y, t, classes):
    if classes:
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))
    return jnp.mean((out[:, 0] - t) ** 2)


def _unpadded_mlp(p, m, x, y, t, classes):
    act = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu}[m["activation"]]
    return _ce_or_mse(mlp_apply(p, x, act), y, t, classes)


def _slice_mlp(p, m, features, classes):
    w, n_out = m["width"], max(classes, 1)
    out = [{"w": p[0]["w"][:features, :w], "b": p[0]["b"][:w]}]
    out += [{"w": p[i]["w"][:w, :w], "b": p[i]["b"][:w]} for i in range(1, m["depth"])]
    out.append({"w": p[-1]["w"][:w, :n_out], "b": p[-1]["b"][:n_out]})
    return out


def _rows(c, batch):
    d = family.datasets()
    n, start = int(c["n_train"]), int(c["train_start"])
    idx = start + np.minimum((np.asarray(batch["u"]) * n).astype(int), n - 1)
    return jnp.asarray(d["x"][idx]), jnp.asarray(d["y"][idx]), jnp.asarray(d["t"][idx])


@pytest.fixture(scope="module")
def padded():
    """The float64 family's pieces, jitted once: the member's constants are arguments, so
    one compilation serves every member."""
    tk = family.family_task("all", batch_size=8, dtype=jnp.float64)
    consts = jax.jit(lambda i: family.member_consts(i, KEY, jnp.float64))
    return {
        "task": tk,
        "consts": lambda name: consts(_member(name)),
        "init": jax.jit(tk.init),
        "value_and_grad": jax.jit(jax.value_and_grad(tk.loss)),
        "batch": tk.batch(jax.random.PRNGKey(2), "train"),
    }


@pytest.mark.parametrize(
    "name", ["mlp/iris/w8/d2/tanh", "mlp/teacher4/w16/d1/gelu", "mlp/wine/w32/d1/relu"]
)
def test_padded_mlp_is_the_unpadded_mlp(padded, name):
    m = family.members()[_member(name)]
    tk, c, batch = padded["task"], padded["consts"](name), padded["batch"]
    feats, classes = int(c["features"]), int(c["classes"])
    p = padded["init"](jax.random.PRNGKey(1), c)
    loss, grad = padded["value_and_grad"](p, c, batch)
    x, y, t = _rows(c, batch)
    small = _slice_mlp(p["mlp"], m, feats, classes)
    ref, ref_grad = jax.value_and_grad(_unpadded_mlp)(small, m, x[:, :feats], y, t, classes)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    got = _slice_mlp(grad["mlp"], m, feats, classes)
    for a, b in zip(
        jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref_grad), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    # every dead entry has gradient exactly 0
    mask = tk.mask(c)
    for g, k in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(mask), strict=True):
        assert np.all(np.asarray(g)[np.asarray(k) == 0] == 0)


def test_padded_quadratic_conv_and_rnn_are_the_unpadded_ones(padded):
    batch, init, vg = padded["batch"], padded["init"], padded["value_and_grad"]

    # quadratic, d = 4, noisy target: ½ dᵀHd on the live block, condition number exactly κ
    c = padded["consts"]("quad/d4/k100/n0.1")
    p = init(jax.random.PRNGKey(1), c)
    h = np.asarray(c["hessian"])
    np.testing.assert_allclose(np.linalg.eigvalsh(h[:4, :4])[[0, -1]], [0.01, 1.0], rtol=1e-10)
    assert np.all(h[4:] == 0) and np.all(h[:, 4:] == 0)
    d = np.asarray(p["quad"][:4] - c["minimum"][:4] - 0.1 * batch["c"][:4])
    loss, g = vg(p, c, batch)
    np.testing.assert_allclose(loss, 0.5 * d @ h[:4, :4] @ d, rtol=1e-12)
    np.testing.assert_allclose(g["quad"][:4], h[:4, :4] @ d, rtol=1e-10)
    assert np.all(np.asarray(g["quad"][4:]) == 0)

    # conv net with 4 of 8 channels against the 4-channel net
    c = padded["consts"]("conv/digits/c4/relu")
    p = init(jax.random.PRNGKey(1), c)["conv"]
    x, y, t = _rows(c, batch)

    def conv_net(q, img):
        dn = ("NHWC", "HWIO", "NHWC")
        h = jax.nn.relu(
            jax.lax.conv_general_dilated(img, q["k1"], (1, 1), "SAME", dimension_numbers=dn)
            + q["b1"]
        )
        h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        h = jax.nn.relu(
            jax.lax.conv_general_dilated(h, q["k2"], (1, 1), "SAME", dimension_numbers=dn) + q["b2"]
        )
        return _ce_or_mse(h.mean((1, 2)) @ q["w"] + q["b"], y, t, 10)

    small = {
        "k1": p["k1"][..., :4],
        "b1": p["b1"][:4],
        "k2": p["k2"][:, :, :4, :4],
        "b2": p["b2"][:4],
        "w": p["w"][:4],
        "b": p["b"],
    }
    full = init(jax.random.PRNGKey(1), c)
    loss, g = vg(full, c, batch)
    ref, rg = jax.value_and_grad(conv_net)(small, x.reshape(-1, 8, 8, 1))
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(g["conv"]["k2"][:, :, :4, :4], rg["k2"], rtol=1e-9, atol=1e-14)
    assert np.all(np.asarray(g["conv"]["k2"][:, :, 4:]) == 0)

    # RNN with 8 of 16 units, decaying-sum target
    c = padded["consts"]("rnn/memory/h8/a0.8")
    full = init(jax.random.PRNGKey(1), c)
    q = full["rnn"]
    small = {
        "wx": q["wx"][:, :8],
        "wh": q["wh"][:8, :8],
        "b": q["b"][:8],
        "wo": q["wo"][:8],
        "bo": q["bo"],
    }
    z = np.asarray(batch["z"])
    target = np.sqrt(1 - 0.64) * z @ (0.8 ** np.arange(family.SEQ_LEN - 1, -1, -1))

    def rnn(s):
        h = jnp.zeros((z.shape[0], 8))
        for tt in range(family.SEQ_LEN):
            h = jnp.tanh(z[:, tt, None] * s["wx"] + h @ s["wh"] + s["b"])
        return jnp.mean(((h @ s["wo"] + s["bo"])[:, 0] - target) ** 2)

    loss, g = vg(full, c, batch)
    ref, rg = jax.value_and_grad(rnn)(small)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(g["rnn"]["wh"][:8, :8], rg["wh"], rtol=1e-9, atol=1e-14)
    assert np.all(np.asarray(g["rnn"]["wh"][8:]) == 0)


# -- the family as a system: every estimator, the hierarchical optimizer ----------------------
@pytest.fixture(scope="module")
def family_system():
    # the quadratic members only: every estimator compiles its own program, and the whole
    # family's second-order step compiles about 20× slower (the padding, masks, sampling
    # and resets are the same)
    return systems.make(
        "lopt",
        task="family",
        optimizer="adam",
        inner_steps=4,
        batch_size=4,
        dtype="float32",
        kinds="quad",
    )


ESTIMATORS = {
    "backprop": {"samples": 2},
    "tbptt": {"particles": 2, "window": 2},
    "es": {"pairs": 2, "sigma": 0.01},
    "tes": {"pairs": 2, "sigma": 0.01, "window": 2},
    "pes": {"pairs": 2, "sigma": 0.01, "window": 2},
    "nres": {"pairs": 2, "sigma": 0.01, "window": 2},
    "reparam": {"pairs": 2, "sigma": 0.01},
    "combined": {"pairs": 2, "sigma": 0.01},
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_is_finite_on_the_family(family_system, name):
    s = family_system
    est = estimators.make(name, s, horizon=4, shard=False, **ESTIMATORS[name])
    st = est.init(KEY, s.theta)
    g, st, info = est.estimate(st, s.theta, jax.random.PRNGKey(1))
    leaves = jax.tree_util.tree_leaves(g)
    assert leaves and all(np.all(np.isfinite(np.asarray(x))) for x in leaves)


def test_hierarchical_optimizer_reads_the_validation_loss():
    s = systems.make(
        "lopt",
        task="family",
        optimizer="lstm",
        inner_steps=2,
        batch_size=4,
        dtype="float64",
        kinds="rnn",
    )
    tk = family.family_task("meta_train", batch_size=4, dtype=jnp.float64, kinds="rnn")
    state = jax.jit(s.init)(KEY, s.theta)
    key = jax.random.PRNGKey(3)
    new, out = jax.jit(s.step)(state, s.theta, key)
    _, k_valid = jax.random.split(key)
    direct = jax.jit(tk.loss)(state.params, state.task, tk.batch(k_valid, "valid"))
    np.testing.assert_allclose(out.aux["valid_loss"], direct, rtol=1e-12)
    # at step 0 the EMA of the log validation loss is the log validation loss itself
    np.testing.assert_allclose(new.opt_state["ema_valid"], np.log(direct), rtol=1e-12)
    assert not np.isclose(new.opt_state["ema_valid"], new.opt_state["ema_train"])
    # the parameter count its docstring states
    assert sum(x.size for x in jax.tree_util.tree_leaves(s.theta)) == 4535


# -- baselines -----------------------------------------------------------------------------------
def test_greedy_list_on_a_hand_made_case():
    # three tasks, four settings: a generalist, two specialists, a dominated one
    losses = np.array(
        [
            [2.0, 2.0, 2.0],  # a generalist
            [0.0, 5.0, 5.0],  # specialist on task 0
            [5.0, 0.5, 0.5],  # specialist on tasks 1, 2
            [3.0, 3.0, 3.0],  # dominated
        ]
    )
    # first: the best mean (0: 2.0 against 3.33, 2.0 (tie, later row), 3.0)
    # second: 0+1 -> mean(0, 2, 2) = 1.33; 0+2 -> mean(2, .5, .5) = 1.0; 0+3 -> 2.0
    # third: +1 -> mean(0, .5, .5) = 0.33; +3 -> 1.0
    assert baselines.greedy_list(losses, 3) == [0, 2, 1]
    np.testing.assert_allclose(baselines.best_of_list(losses, [0, 2, 1], 2), [2.0, 0.5, 0.5])
    assert baselines.tune_adam_global(losses) == 0
    np.testing.assert_array_equal(baselines.tune_adam_per_task(losses), [1, 2, 2])


def test_adam_baselines_run_on_the_family():
    # every call has the shape (2 settings, 2 tasks): one compilation serves them all
    # quadratics: only their branch is compiled (`final_losses` builds the tasks' kinds)
    quads = {t["index"] for t in family.list_tasks() if t["kind"] == "quad"}
    train = [i for i in family.split_indices("meta_train") if i in quads][:2]
    held = [i for i in family.split_indices("held_out") if i in quads][:2]
    run = {"inner_steps": 3, "batch_size": 4}
    losses = baselines.final_losses(baselines.with_lrs([1e-3, 1e-1]), train, **run)
    assert losses.shape == (2, 2) and np.all(np.isfinite(losses))
    lst, cand = baselines.adam_list(train, k=2, candidates=2, **run)
    assert lst.shape == (2, 4) and cand.shape == (2, 2)
    np.testing.assert_array_equal(lst, baselines.adam_grid(2)[baselines.greedy_list(cand, 2)])
    best = baselines.evaluate_list(lst, held, k=2, **run)
    assert best.shape == (2,) and np.all(np.isfinite(best))
