"""MW-Net: the weighting net (VNet, outputs in (0, 1)), its own Adam, the meta gradient against
finite differences of a NumPy float64 implementation, lower weights on flipped labels, bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import case_ids, check_bad_input

from ebomlc_jax import bilevel, methods, models
from ebomlc_jax.methods import mwnet

BAD_INPUT = [
    ({"method.name": "mwnet", "method.mwnet.hidden_dim": 0}, r"mwnet\.hidden_dim=0 .*\[1, inf\)"),
    ({"method.name": "mwnet", "method.mwnet.net_lr": 0.0}, r"mwnet\.net_lr=0\.0 .*\(0, inf\)"),
    (
        {"method.name": "mwnet", "method.mwnet.net_weight_decay": -1e-4},
        r"mwnet\.net_weight_decay=-0\.0001 .*a number in \[0, inf\)",
    ),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUT, ids=case_ids(BAD_INPUT))
def test_bad_input_is_a_config_error_before_any_compute(overrides, message, tmp_path, monkeypatch):
    check_bad_input(overrides, message, tmp_path, monkeypatch)


K, D = 3, 4  # classes and input dimension of the small problems


class TinyNet(nn.Module):
    """Dense, BatchNorm, ReLU, Dense: a main model with BN statistics, returning (logits, h)."""

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(16)(x))
        h = jax.nn.relu(h)
        return nn.Dense(K)(h), h


def blobs(key, n, rate=0.0):
    """Class k around 3 e_k; a `rate` share of the labels moved to the next class."""
    k1, k2, k3 = jax.random.split(key, 3)
    y = jax.random.randint(k1, (n,), 0, K)
    x = 3.0 * jax.nn.one_hot(y, D) + jax.random.normal(k2, (n, D))
    flip = jax.random.uniform(k3, (n,)) < rate
    return {"image": x, "label": jnp.where(flip, (y + 1) % K, y), "true_label": y}


def linear_problem(noisy, clean):
    """(losses_fn, upper) of a linear softmax model {"w", "b"} on the two batches."""

    def logits(w, x):
        return x @ w["w"] + w["b"]

    def losses_fn(w):
        return bilevel.cross_entropies(logits(w, noisy["image"]), noisy["label"]), None

    def upper(w, _):
        return bilevel.cross_entropy(logits(w, clean["image"]), clean["label"]), None

    return losses_fn, upper


def mw_weigh(net):
    """MW-Net's weigh(theta, losses): the net's weights and no penalty."""
    return lambda theta, losses: (net.apply({"params": theta}, losses), jnp.zeros(()))


# ---------------------------------------------------------------- NumPy float64 reference
def np_probs(w, x):
    z = x @ w["w"] + w["b"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_losses(w, batch):
    p = np_probs(w, batch["image"])
    return -np.log(p[np.arange(len(p)), batch["label"]])


def np_lookahead(w, batch, v, lr):
    """w - lr (1/n) sum_i v_i grad l_i(w) for the linear softmax model."""
    r = np_probs(w, batch["image"]) - np.eye(K)[batch["label"]]  # d l_i / d logits
    n = len(v)
    return {
        "w": w["w"] - lr * batch["image"].T @ (v[:, None] * r) / n,
        "b": w["b"] - lr * (v[:, None] * r).sum(axis=0) / n,
    }


def np_mlp(theta, losses, output):
    """Linear(1, H), ReLU, Linear(H, 1), output: WeightNet in NumPy."""
    h = np.maximum(losses[:, None] @ theta["fc1"]["kernel"] + theta["fc1"]["bias"], 0)
    z = (h @ theta["fc2"]["kernel"] + theta["fc2"]["bias"])[:, 0]
    return 1 / (1 + np.exp(-z)) if output == "sigmoid" else np.log1p(np.exp(z))


def fd_grad(f, tree, h=1e-6):
    """Central finite differences of a scalar f over every entry of a tree of arrays."""
    leaves, treedef = jax.tree.flatten(jax.tree.map(np.array, tree))
    grads = []
    for leaf in leaves:
        g = np.zeros_like(leaf)
        for i in np.ndindex(leaf.shape):
            old = leaf[i]
            leaf[i] = old + h
            up = f(jax.tree.unflatten(treedef, leaves))
            leaf[i] = old - h
            down = f(jax.tree.unflatten(treedef, leaves))
            leaf[i] = old
            g[i] = (up - down) / (2 * h)
        grads.append(g)
    return jax.tree.unflatten(treedef, grads)


def assert_trees_close(got, want, rtol=1e-6, atol=1e-9):
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def float64_problem(seed, n=6, m=5):
    """A linear model and two batches as float64 NumPy arrays (noisy labels random)."""
    rs = np.random.RandomState(seed)
    w = {"w": 0.5 * rs.randn(D, K), "b": 0.1 * rs.randn(K)}
    noisy = {"image": rs.randn(n, D), "label": rs.randint(K, size=n)}
    clean = {"image": rs.randn(m, D), "label": rs.randint(K, size=m)}
    return w, noisy, clean


def as_jax(tree):
    return jax.tree.map(jnp.asarray, tree)


# ---------------------------------------------------------------- the weighting net
def test_weight_net_is_vnet_with_outputs_in_the_unit_interval():
    net = models.WeightNet()
    params = net.init(jax.random.key(0), jnp.zeros(1))["params"]
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {
        "fc1": {"kernel": (1, 100), "bias": (100,)},
        "fc2": {"kernel": (100, 1), "bias": (1,)},
    }
    # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
    for layer, bound in (("fc1", 1.0), ("fc2", 0.1)):
        for leaf in params[layer].values():
            largest = float(jnp.max(jnp.abs(leaf)))
            assert largest <= bound and (leaf.size < 100 or largest > 0.9 * bound)
    losses = jnp.linspace(0.0, 20.0, 401)
    for seed in range(5):
        theta = net.init(jax.random.key(seed), jnp.zeros(1))["params"]
        v = net.apply({"params": theta}, losses)
        assert v.shape == losses.shape
        assert bool(jnp.all((v > 0) & (v < 1)))
        np.testing.assert_allclose(
            v, np_mlp(jax.tree.map(np.asarray, theta), np.asarray(losses), "sigmoid"), rtol=1e-5
        )


def test_weighting_net_steps_with_its_own_adam():
    """meta_tx is torch.optim.Adam(net_lr, weight_decay=net_weight_decay) (checked by hand over
    two steps), and a training step moves the net by it: Adam's first step moves every entry by
    net_lr (|update| = lr |g| / (|g| + eps)); the main lr (0.1) or an SGD step would not."""
    lr, wd = 2e-3, 1e-2
    method = methods.create(
        "mwnet",
        main_model=TinyNet(),
        lr_schedule=optax.constant_schedule(0.1),
        net_lr=lr,
        net_weight_decay=wd,
    )
    theta = {"p": jnp.array([0.5, -1.0, 2.0])}
    grads = [jnp.array([0.3, -0.2, 1e-3]), jnp.array([-0.1, 0.4, 2e-3])]
    opt = method.meta_tx.init(theta)
    p, m, v = np.array(theta["p"]), np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        updates, opt = method.meta_tx.update({"p": g}, opt, theta)
        theta = optax.apply_updates(theta, updates)
        g = np.asarray(g) + wd * p  # PyTorch Adam: L2 added to the gradient
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
        p = p - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        np.testing.assert_allclose(theta["p"], p, rtol=1e-6)

    state = method.init(jax.random.key(0), jnp.zeros((1, D)))
    noisy, clean = blobs(jax.random.key(1), 16, 0.4), blobs(jax.random.key(2), 8)
    new, _ = jax.jit(method.step)(state, noisy, clean)
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a - b)), new["meta"], state["meta"])
    for leaf in jax.tree.leaves(moved):
        np.testing.assert_allclose(leaf, lr, rtol=0.02)
    assert int(optax.tree_utils.tree_get(new["meta_opt"], "count")) == 1
    assert new["main_opt"] is not None and int(new["step"]) == 1


# ---------------------------------------------------------------- the meta gradient
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_meta_gradient_equals_finite_differences(seed):
    """d/d theta CE_clean(w - lr (1/n) sum_i V_theta(l_i) grad l_i(w)), V's input held constant
    (`vnet(cost_v.data)`), against nested finite differences in float64; and the same as
    bilevel.unrolled_hypergradient with G = mean_i V_theta(stop_grad l_i) l_i."""
    w, noisy, clean = float64_problem(seed)
    lr = 0.5
    net = models.WeightNet(hidden_dim=4)
    with jax.enable_x64(True):
        theta = net.init(jax.random.key(seed), jnp.zeros(1))["params"]
        theta = jax.tree.map(lambda x: np.asarray(x, np.float64), theta)

        def outer(th):
            v = np_mlp(th, np_losses(w, noisy), "sigmoid")
            return np.mean(np_losses(np_lookahead(w, noisy, v, lr), clean))

        losses_fn, upper = linear_problem(as_jax(noisy), as_jax(clean))
        weigh = mw_weigh(net)
        got, info = mwnet.reweighting_hypergradient(
            losses_fn, upper, as_jax(w), as_jax(theta), weigh, lr=lr
        )
        assert jax.tree.leaves(got)[0].dtype == jnp.float64
        assert_trees_close(got, fd_grad(outer, theta), rtol=1e-6)
        np.testing.assert_allclose(info["F_lookahead"], outer(theta), rtol=1e-12)

        def lower(ww, th):
            losses = losses_fn(ww)[0]
            return jnp.mean(net.apply({"params": th}, jax.lax.stop_gradient(losses)) * losses), 0

        reference, _ = bilevel.unrolled_hypergradient(upper, lower, as_jax(w), as_jax(theta), lr=lr)
        assert_trees_close(got, reference, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_meta_gradient_of_each_weight_favours_the_true_labels(seed):
    """With each weight its own parameter, dF/dv_i = -lr/n <grad l_i(w), grad F(w')>: positive
    (lower the weight) for most flipped labels, negative for most correct ones, when the model
    already predicts the true classes (the classes overlap: a few examples lie across)."""
    noisy, clean = blobs(jax.random.key(seed), 64, 0.4), blobs(jax.random.key(seed + 10), 256)
    w = {"w": jnp.eye(D, K), "b": jnp.zeros(K)}  # predicts the true class
    losses_fn, upper = linear_problem(noisy, clean)
    weigh = lambda v, _: (v, jnp.zeros(()))  # noqa: E731
    d_v, _ = mwnet.reweighting_hypergradient(losses_fn, upper, w, jnp.ones(64), weigh, lr=0.1)
    flipped = np.asarray(noisy["label"] != noisy["true_label"])
    d_v = np.asarray(d_v)
    assert np.mean(d_v[flipped] > 0) > 0.9 and np.mean(d_v[~flipped] < 0) > 0.9
    assert np.mean(d_v[flipped]) > 0 > np.mean(d_v[~flipped])


def test_meta_steps_give_flipped_labels_lower_weights():
    """The weighting net, updated by its own Adam along the meta gradient (main model held at a
    point that predicts the true classes, fresh batches each step), learns to weigh the
    mislabelled examples (high loss) below the correctly labelled ones."""
    method = methods.create("mwnet", main_model=TinyNet(), lr_schedule=optax.constant_schedule(0.1))
    net, tx = method.meta_model, method.meta_tx
    w = {"w": jnp.eye(D, K), "b": jnp.zeros(K)}

    @jax.jit
    def meta_step(theta, opt, key):
        noisy, clean = blobs(key, 100, 0.4), blobs(jax.random.fold_in(key, 1), 100)
        losses_fn, upper = linear_problem(noisy, clean)
        weigh = mw_weigh(net)
        d, info = mwnet.reweighting_hypergradient(losses_fn, upper, w, theta, weigh, lr=0.1)
        updates, opt = tx.update(d, opt, theta)
        theta = optax.apply_updates(theta, updates)
        v = net.apply({"params": theta}, info["losses"])
        return theta, opt, mwnet.weight_measurements(v, noisy)

    theta = net.init(jax.random.key(0), jnp.zeros(1))["params"]
    opt = tx.init(theta)
    gaps = []
    for i in range(40):
        theta, opt, meas = meta_step(theta, opt, jax.random.key(i))
        gaps.append(float(meas["weight_correct"] - meas["weight_mislabelled"]))
    assert abs(gaps[0]) < 0.05  # no preference to start with
    assert min(gaps[-10:]) > 0.2, gaps


def test_a_training_step_reports_weights_in_the_unit_interval_by_true_label():
    method = methods.create("mwnet", main_model=TinyNet(), lr_schedule=optax.constant_schedule(0.1))
    state = method.init(jax.random.key(0), jnp.zeros((1, D)))
    noisy, clean = blobs(jax.random.key(1), 32, 0.4), blobs(jax.random.key(2), 16)
    _, meas = jax.jit(method.step)(state, noisy, clean)
    for name in ("mean_weight", "weight_mislabelled", "weight_correct"):
        assert 0 < float(meas[name]) < 1, name
    # The logged main-step loss is the weighted noisy CE: between 0 and the unweighted CE.
    assert 0 < float(meas["loss"]) < float(meas["noisy_ce"])
