"""L2RW: the weights against a finite-difference hypergradient (float64), mislabelled examples
weighed down where the clean loss prefers the true labels, clipping and normalisation, the step
against per-example gradients by hand, and four devices (pmap) against one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from test_parallel import assert_close, run

from ebomlc_jax import bilevel, models
from ebomlc_jax.methods import common, l2rw

K = 3
MU, WD = 0.9, 5e-4


def mlp_losses(params, x, y):
    """Per-example CE of a two-layer net whose hidden layer is centred over the batch (so each
    loss depends on the whole batch, as through BatchNorm)."""
    h = jnp.tanh(x @ params["w1"])
    h = h - jnp.mean(h, axis=0)
    return bilevel.cross_entropies(h @ params["w2"] + params["b"], y)


def mlp_problem(seed, n=6, m=5, d=4):
    ks = jax.random.split(jax.random.key(seed), 6)
    params = {
        "w1": jax.random.normal(ks[0], (d, 5)),
        "w2": jax.random.normal(ks[1], (5, K)),
        "b": jax.random.normal(ks[2], (K,)),
    }
    x, y = jax.random.normal(ks[3], (n, d)), jax.random.randint(ks[4], (n,), 0, K)
    xc, yc = jax.random.normal(ks[5], (m, d)), jnp.arange(m) % K
    return params, (x, y), (xc, yc)


@pytest.mark.parametrize("clean_decay", [0.0, 0.05])
def test_raw_weights_are_the_finite_difference_hypergradient(clean_decay):
    """raw_i = -d/d eps_i L_clean(w - lr grad_w sum_j eps_j l_j(w)) at eps = 0, in float64 by
    central differences (L_clean with its L2 term when clean_decay > 0); the step's gradient is
    that of sum_i w_i l_i with the weights fixed."""
    with jax.enable_x64(True):
        params, (x, y), (xc, yc) = mlp_problem(0)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        x, xc = x.astype(jnp.float64), xc.astype(jnp.float64)
        lr = 0.3

        def per_example(p):
            return mlp_losses(p, x, y), None

        def clean_loss(p):
            return jnp.mean(mlp_losses(p, xc, yc))

        def after_lookahead(eps):
            grad = jax.grad(lambda p: eps @ per_example(p)[0])(params)
            ahead = jax.tree.map(lambda w, g: w - lr * g, params, grad)
            l2 = sum(jnp.sum(w**2) for w in jax.tree.leaves(ahead))
            return clean_loss(ahead) + clean_decay / 2 * l2

        grad, info = l2rw.reweighted_gradient(
            per_example, clean_loss, params, lr, clean_decay=clean_decay
        )
        h = 1e-5
        eye = np.eye(len(y))
        fd = [
            (after_lookahead(jnp.asarray(h * e)) - after_lookahead(jnp.asarray(-h * e))) / (2 * h)
            for e in eye
        ]
        assert info["raw"].dtype == jnp.float64
        np.testing.assert_allclose(info["raw"], -np.array(fd), rtol=1e-7, atol=1e-9)
        assert (info["raw"] > 0).any() and (info["raw"] < 0).any()  # clipping has work to do
        np.testing.assert_allclose(info["weights"], l2rw.normalize_weights(info["raw"]))
        want = jax.grad(lambda p: info["weights"] @ per_example(p)[0])(params)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_mislabelled_examples_get_lower_weights():
    """Three well separated clusters, a linear softmax model that has started learning them, a
    clean batch with the true labels, a noisy batch with every other label flipped: each flipped
    example's weight is below each correct one's (most flipped ones are clipped to zero)."""
    centres = 3.0 * jnp.eye(K, 6)
    k1, k2 = jax.random.split(jax.random.key(0))
    true = jnp.arange(12) % K
    x = centres[true] + 0.3 * jax.random.normal(k1, (12, 6))
    flipped = jnp.arange(12) % 2 == 1
    noisy_y = jnp.where(flipped, (true + 1) % K, true)
    xc = centres[jnp.arange(9) % K] + 0.3 * jax.random.normal(k2, (9, 6))
    params = {"w": 0.1 * centres.T, "b": jnp.zeros(K)}

    def losses(p, inputs, labels):
        return bilevel.cross_entropies(inputs @ p["w"] + p["b"], labels)

    _, info = l2rw.reweighted_gradient(
        lambda p: (losses(p, x, noisy_y), None),
        lambda p: jnp.mean(losses(p, xc, jnp.arange(9) % K)),
        params,
        0.1,
    )
    w = np.asarray(info["weights"])
    assert w[np.asarray(flipped)].max() < w[~np.asarray(flipped)].min()
    assert (w[np.asarray(flipped)] == 0).mean() >= 0.5
    assert w.sum() == pytest.approx(1.0)
    meas = l2rw.weight_by_correctness(info["weights"], {"label": noisy_y, "true_label": true})
    assert float(meas["weight_mislabelled"]) < 0.5 < 1.0 < float(meas["weight_correct"])


def test_clipping_and_normalisation():
    np.testing.assert_allclose(
        l2rw.normalize_weights(jnp.array([-1.0, 0.0, 1.0, 3.0])), [0.0, 0.0, 0.25, 0.75]
    )
    # No positive raw weight: all weights stay zero (Algorithm 1's delta(sum) term, the code's
    # `ex_weight_sum += tf.equal(ex_weight_sum, 0)`), not uniform.
    for raw in (jnp.array([-1.0, -2.0, 0.0]), jnp.zeros(3)):
        out = l2rw.normalize_weights(raw)
        assert np.all(np.isfinite(out)) and not np.any(out)
    # Empty groups in the diagnostic read 0, never NaN (measurements must stay finite).
    meas = l2rw.weight_by_correctness(
        jnp.full(2, 0.5), {"label": jnp.arange(2), "true_label": jnp.arange(2)}
    )
    assert float(meas["weight_mislabelled"]) == 0.0 and float(meas["weight_correct"]) == 1.0


@pytest.mark.parametrize("clean_weight_decay", [False, True])
def test_a_step_by_hand_from_per_example_gradients(clean_weight_decay):
    """The weights from explicit per-example gradients (a Jacobian, not the JVP), the clean loss in
    training mode, the main step PyTorch's SGD on sum_i w_i l_i, BN running statistics from the
    noisy batch's pass."""
    model = models.CifarResNet(K, blocks_per_stage=1, widths=(4, 8))
    method = l2rw.L2RW(
        main_model=model,
        lr_schedule=optax.piecewise_constant_schedule(0.1, {2: 0.1}),
        clean_weight_decay=clean_weight_decay,
    )
    ks = jax.random.split(jax.random.key(1), 6)
    noisy = {
        "image": jax.random.normal(ks[0], (6, 8, 8, 3)),
        "label": jax.random.randint(ks[1], (6,), 0, K),
        "true_label": jax.random.randint(ks[2], (6,), 0, K),
    }
    clean = {"image": jax.random.normal(ks[3], (4, 8, 8, 3)), "label": jnp.arange(4) % K}
    state = method.init(jax.random.key(0), noisy["image"][:1])
    step = jax.jit(method.step)
    for i in range(2):  # a nonzero momentum buffer, moved statistics; lr 0.01 at step 2
        state, _ = step(state, {**noisy, "image": noisy["image"] + i + 1}, clean)

    w, unravel = ravel_pytree(state["main"]["params"])
    buf, _ = ravel_pytree(common.momentum_buffer(state["main_opt"]))

    def fwd(wv, images):
        (logits, _), new = model.apply(
            {"params": unravel(wv), "batch_stats": state["main"]["batch_stats"]},
            images,
            train=True,
            mutable=True,
        )
        return logits, new["batch_stats"]

    def losses(wv):
        return bilevel.cross_entropies(fwd(wv, noisy["image"])[0], noisy["label"])

    def clean_loss(wv):
        logits = fwd(wv, clean["image"])[0]
        value = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), clean["label"]])
        return value + (0.5 * WD * wv @ wv if clean_weight_decay else 0.0)

    jac = jax.jacrev(losses)(w)  # [6, P]: per-example gradients
    lr = 0.01
    raw = lr * jac @ jax.grad(clean_loss)(w)
    plus = np.maximum(np.asarray(raw), 0)
    weights = plus / plus.sum()
    g = weights @ jac
    new_buf = MU * buf + g + WD * w
    new_w = w - lr * new_buf

    new_state, meas = step(state, noisy, clean)
    np.testing.assert_allclose(ravel_pytree(new_state["main"]["params"])[0], new_w, atol=2e-6)
    stats = fwd(w, noisy["image"])[1]
    for a, b in zip(
        jax.tree.leaves(new_state["main"]["batch_stats"]), jax.tree.leaves(stats), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(meas["loss"]) == pytest.approx(float(weights @ losses(w)), rel=1e-5)
    assert float(meas["lr"]) == pytest.approx(lr)
    wrong = np.asarray(noisy["label"] != noisy["true_label"])
    assert float(meas["weight_mislabelled"]) == pytest.approx(6 * weights[wrong].mean(), rel=1e-4)
    assert float(meas["zero_weight_fraction"]) == pytest.approx((plus == 0).mean())


def test_four_devices_under_pmap_equal_one():
    """The weights are normalised over the global batch, each device's weighted gradient averaged
    into the global one, the diagnostics' means taken over the global batch. (Under jit sharding
    the program is the one-device program: nothing of L2RW's own to check.)"""
    assert jax.device_count() >= 4
    assert_close(run("l2rw", mode="pmap", devices=4), run("l2rw"))


# No BAD_INPUT here: the block's only field, clean_weight_decay, is a bool, covered by
# tests/test_train.py's test_a_boolean_field_refuses_anything_but_a_bool.
