"""ebomlc_jax.bilevel against an independent NumPy float64 implementation (finite differences)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebomlc_jax import bilevel

K, D, IN, B = 3, 4, 5, 6
RTOL = 1e-4


# ------------------------------------------------------------ a tiny model, twice: JAX and NumPy
def init(seed):
    rs = np.random.RandomState(seed)
    main = {
        "w1": rs.randn(IN, D),
        "b1": rs.randn(D) * 0.1,
        "w2": rs.randn(D, K),
        "b2": rs.randn(K) * 0.1,
    }
    meta = {"a": rs.randn(D, K), "emb": rs.randn(K, K)}
    batch = {"image": rs.randn(B, IN), "label": rs.randint(0, K, B).astype(np.int32)}
    clean = {"image": rs.randn(B, IN), "label": rs.randint(0, K, B).astype(np.int32)}
    return main, meta, batch, clean


def main_fn(p, x):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"], h


def meta_fn(p, h, y):
    return jax.nn.softmax(h @ p["a"] + p["emb"][y], axis=-1)


def np_main(p, x):
    h = np.tanh(x @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"], h


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_meta(p, h, y):
    return np_softmax(h @ p["a"] + p["emb"][y])


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_G(w, a, batch, targets=None):
    """Eq. 3; `targets` fixed -> the stop-gradient on h (the meta path sees constant features)."""
    logits, h = np_main(w, batch["image"])
    t = np_meta(a, h, batch["label"]) if targets is None else targets
    return -np.mean(np.sum(t * np_log_softmax(logits), -1))


def np_F(w, a, batch, rho, meta_probs=None):
    """Eq. 9 (probability mixture)."""
    logits, h = np_main(w, batch["image"])
    pm = np_meta(a, h, batch["label"]) if meta_probs is None else meta_probs
    mix = rho * np_softmax(logits) + (1 - rho) * pm
    return -np.mean(np.log(mix[np.arange(len(batch["label"])), batch["label"]]))


def np_CE(w, batch):
    logits, _ = np_main(w, batch["image"])
    return -np.mean(np_log_softmax(logits)[np.arange(len(batch["label"])), batch["label"]])


def fd_grad(f, tree, h=1e-6):
    """Central finite differences of a scalar NumPy function of a dict of arrays."""
    grad = {}
    for k, v in tree.items():
        g = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            up, dn = {**tree, k: v.copy()}, {**tree, k: v.copy()}
            up[k][i] += h
            dn[k][i] -= h
            g[i] = (f(up) - f(dn)) / (2 * h)
        grad[k] = g
    return grad


def np_grads_G(w, a, batch):
    """(grad_w G, grad_a G) with the stop-gradient on h honoured."""
    _, h = np_main(w, batch["image"])
    targets = np_meta(a, h, batch["label"])
    gw = fd_grad(lambda ww: np_G(ww, a, batch, targets), w)
    ga = fd_grad(lambda aa: np_G(w, aa, batch), a)
    return gw, ga


def np_grads_F(w, a, batch, rho):
    _, h = np_main(w, batch["image"])
    pm = np_meta(a, h, batch["label"])
    gw = fd_grad(lambda ww: np_F(ww, a, batch, rho, pm), w)
    ga = fd_grad(lambda aa: np_F(w, aa, batch, rho), a)
    return gw, ga


def flat(*trees):
    return np.concatenate([np.ravel(t[k]) for t in trees for k in sorted(t)])


def axpy(alpha, x, y):
    return {k: alpha * x[k] + y[k] for k in x}


def vec(x):
    if isinstance(x, tuple):
        return flat(*x)
    return flat(x) if isinstance(x, dict) else np.asarray(x)


def close(actual, expected, rtol=RTOL):
    actual, expected = vec(actual), vec(expected)
    err = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-12)
    assert err < rtol, f"relative error {err:.2e}"


def as_jax(tree):
    return jax.tree.map(jnp.asarray, tree)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


SEEDS = [0, 1, 2]


# ---------------------------------------------------------------- losses
@pytest.mark.parametrize("seed", SEEDS)
def test_lower_and_upper_loss_values(seed):
    w, a, batch, clean = init(seed)
    g = bilevel.lower_loss(as_jax(w), as_jax(a), as_jax(batch), main_fn, meta_fn)
    assert g.dtype == jnp.float64
    close(g, np_G(w, a, batch))
    for rho in (0.2, 0.7, 1.0):
        f = bilevel.upper_loss(as_jax(w), as_jax(a), as_jax(clean), main_fn, meta_fn, rho)
        close(f, np_F(w, a, clean, rho))


@pytest.mark.parametrize("seed", SEEDS)
def test_loss_gradients_stop_at_features(seed):
    w, a, batch, clean = init(seed)
    gw, ga = jax.grad(bilevel.lower_loss, argnums=(0, 1))(
        as_jax(w), as_jax(a), as_jax(batch), main_fn, meta_fn
    )
    close((gw, ga), np_grads_G(w, a, batch))
    fw, fa = jax.grad(bilevel.upper_loss, argnums=(0, 1))(
        as_jax(w), as_jax(a), as_jax(clean), main_fn, meta_fn, 0.2
    )
    close((fw, fa), np_grads_F(w, a, clean, 0.2))


def test_rho_one_is_eq2():
    w, a, _, clean = init(3)
    f, (fw, fa) = jax.value_and_grad(bilevel.upper_loss, argnums=(0, 1))(
        as_jax(w), as_jax(a), as_jax(clean), main_fn, meta_fn, 1.0
    )
    close(f, np_CE(w, clean))
    close(fw, fd_grad(lambda ww: np_CE(ww, clean), w))
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(fa))


@pytest.mark.parametrize("rho", [0.2, 1.0])
def test_mixture_nll_is_finite_when_the_meta_probability_underflows(rho):
    """A meta model whose probability for the label is exactly 0: value and gradients finite
    (jnp.log(p) gave a NaN gradient there), and the value is -log(rho softmax_y) up to the floor."""
    logits = jnp.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    probs = jnp.array([[0.0, 0.5, 0.5], [0.2, 0.0, 0.8]])  # p_y = 0 for both labels
    labels = jnp.array([0, 1])
    value, (g_logits, g_probs) = jax.value_and_grad(bilevel.mixture_nll, argnums=(0, 1))(
        logits, probs, labels, rho
    )
    assert np.isfinite(value) and np.isfinite(g_logits).all() and np.isfinite(g_probs).all()
    logp = jax.nn.log_softmax(logits)[jnp.arange(2), labels]
    np.testing.assert_allclose(value, -jnp.mean(jnp.log(rho) + logp), rtol=1e-6)
    np.testing.assert_allclose(
        g_logits,
        jax.grad(lambda z: -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(2), labels]))(logits),
        rtol=1e-5,
        atol=1e-7,
    )


# ---------------------------------------------------------------- value gap
@pytest.mark.parametrize("seed", SEEDS)
def test_value_gap_and_its_gradient(seed):
    w, a, batch, _ = init(seed)
    lr = 0.3
    gw, _ = np_grads_G(w, a, batch)
    w1 = axpy(-lr, gw, w)
    q = bilevel.value_gap(as_jax(w), as_jax(a), as_jax(batch), main_fn, meta_fn, lr)
    close(q, np_G(w, a, batch) - np_G(w1, a, batch))
    expected = tuple(
        axpy(-1.0, g1, g0)
        for g0, g1 in zip(np_grads_G(w, a, batch), np_grads_G(w1, a, batch), strict=True)
    )
    got = jax.grad(bilevel.value_gap, argnums=(0, 1))(
        as_jax(w), as_jax(a), as_jax(batch), main_fn, meta_fn, lr
    )
    close(got, expected)
    jitted = jax.jit(jax.grad(bilevel.value_gap, argnums=(0, 1)), static_argnums=(3, 4))
    close(jitted(as_jax(w), as_jax(a), as_jax(batch), main_fn, meta_fn, lr), expected)


# ---------------------------------------------------------------- barrier coefficient
def test_barrier_coefficient_closed_form():
    rs = np.random.RandomState(0)
    for _ in range(5):
        gf = ({"x": rs.randn(7)}, {"y": rs.randn(3)})
        gq = ({"x": rs.randn(7)}, {"y": rs.randn(3)})
        delta = rs.rand()
        sq = np.sum(gq[0]["x"] ** 2) + np.sum(gq[1]["y"] ** 2)
        want = max(delta - gf[0]["x"] @ gq[0]["x"] / sq, 0.0)
        close(bilevel.barrier_coefficient(as_jax(gf), as_jax(gq), delta), want)
        # Eq. 10 -> Eq. 11: the alpha alignment term in phi-bar cancels the alpha part of <gF, gQ>.
        phi_bar = delta * sq + gf[1]["y"] @ gq[1]["y"]
        full_dot = gf[0]["x"] @ gq[0]["x"] + gf[1]["y"] @ gq[1]["y"]
        close(
            bilevel.barrier_coefficient(as_jax(gf), as_jax(gq), delta),
            max((phi_bar - full_dot) / sq, 0.0),
        )


def test_barrier_coefficient_clamps_at_zero_and_is_finite_at_zero_grad_q():
    gq = ({"x": jnp.ones(4)}, {"y": jnp.ones(2)})
    aligned = ({"x": 10.0 * jnp.ones(4)}, {"y": jnp.zeros(2)})
    assert float(bilevel.barrier_coefficient(aligned, gq, 0.25)) == 0.0
    zero = ({"x": jnp.zeros(4)}, {"y": jnp.zeros(2)})
    for dtype in (jnp.float32, jnp.float64):
        z = jax.tree.map(lambda v, dtype=dtype: v.astype(dtype), zero)
        beta = bilevel.barrier_coefficient(aligned, z, 0.25)
        assert np.isfinite(beta) and float(beta) == 0.25
    # A tiny but nonzero grad Q is not swamped by the epsilon.
    tiny = ({"x": 1e-6 * jnp.ones(4, jnp.float32)}, {"y": jnp.zeros(2, jnp.float32)})
    neg = ({"x": -1e-6 * jnp.ones(4, jnp.float32)}, {"y": jnp.zeros(2, jnp.float32)})
    np.testing.assert_allclose(float(bilevel.barrier_coefficient(neg, tiny, 0.25)), 1.25, rtol=1e-6)


# ---------------------------------------------------------------- directions
def np_ebomlc(w, a, batch, clean, rho, delta, xi, lr):
    gw, ga = np_grads_G(w, a, batch)
    w1 = axpy(-lr, gw, w)
    g1w, g1a = np_grads_G(w1, a, batch)
    qw, qa = axpy(-1.0, g1w, gw), axpy(-1.0, g1a, ga)
    fw, fa = np_grads_F(w, a, clean, rho)
    beta = max(delta - flat(fw) @ flat(qw) / (flat(qw) @ flat(qw) + flat(qa) @ flat(qa)), 0.0)
    return (axpy(xi * beta, qw, fw), axpy(xi * beta, qa, fa)), beta, w1


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rho,delta,xi", [(0.2, 0.25, 0.5), (0.6, 2.0, 0.9)])
def test_ebomlc_direction(seed, rho, delta, xi):
    w, a, batch, clean = init(seed)
    lr = 0.3
    (dw, da), aux = bilevel.ebomlc_direction(
        as_jax(w),
        as_jax(a),
        as_jax(batch),
        as_jax(clean),
        main_fn,
        meta_fn,
        rho=rho,
        delta=delta,
        xi=xi,
        lr=lr,
    )
    want, beta, w1 = np_ebomlc(w, a, batch, clean, rho, delta, xi, lr)
    close((dw, da), want)
    close(aux["beta"], beta) if beta > 0 else np.testing.assert_equal(float(aux["beta"]), 0.0)
    close(aux["inner_params"], w1)
    close(aux["F"], np_F(w, a, clean, rho))
    close(aux["G"], np_G(w, a, batch))
    close(aux["Q"], np_G(w, a, batch) - np_G(w1, a, batch))


def test_ebomlc_with_rho_one_reduces_to_eq7():
    """rho = 1: grad_alpha F = 0, so beta-bar is Eq. 7's beta and d_alpha is xi beta grad_a Q."""
    w, a, batch, clean = init(4)
    (dw, da), aux = bilevel.ebomlc_direction(
        as_jax(w),
        as_jax(a),
        as_jax(batch),
        as_jax(clean),
        main_fn,
        meta_fn,
        rho=1.0,
        delta=0.8,
        xi=1.0,
        lr=0.3,
    )
    (mw, ma), maux = bilevel.mlcd_direction(
        as_jax(w), as_jax(a), as_jax(batch), as_jax(clean), main_fn, meta_fn, delta=0.8, lr=0.3, k=1
    )
    close((dw, da), (mw, ma))
    close(aux["beta"], maux["beta"])


@pytest.mark.parametrize("k", [1, 3])
def test_mlcd_direction(k):
    w, a, batch, clean = init(5)
    lr, delta = 0.2, 0.5
    wk = w
    for _ in range(k):
        wk = axpy(-lr, np_grads_G(wk, a, batch)[0], wk)
    (gw, ga), (kw, ka) = np_grads_G(w, a, batch), np_grads_G(wk, a, batch)
    qw, qa = axpy(-1.0, kw, gw), axpy(-1.0, ka, ga)
    fw = fd_grad(lambda ww: np_CE(ww, clean), w)
    sq = flat(qw) @ flat(qw) + flat(qa) @ flat(qa)
    phi = delta * sq  # Eq. 7 with F = (grad_w F, 0_alpha)
    beta = max((phi - flat(fw) @ flat(qw)) / sq, 0.0)
    (dw, da), aux = bilevel.mlcd_direction(
        as_jax(w),
        as_jax(a),
        as_jax(batch),
        as_jax(clean),
        main_fn,
        meta_fn,
        delta=delta,
        lr=lr,
        k=k,
    )
    close((dw, da), (axpy(beta, qw, fw), {n: beta * v for n, v in qa.items()}))
    close(aux["Q"], np_G(w, a, batch) - np_G(wk, a, batch))


# ---------------------------------------------------------------- MLC hypergradient
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shifted", [False, True])
def test_mlc_meta_gradient_is_the_unrolled_hypergradient(seed, shifted):
    """Nested finite differences of alpha -> CE_clean(w - lr grad_w G(w, alpha) + shift)."""
    w, a, batch, clean = init(seed)
    lr = 0.3
    rs = np.random.RandomState(seed + 10)
    shift = {k: 0.05 * rs.randn(*v.shape) for k, v in w.items()} if shifted else None

    def outer(aa):
        gw = np_grads_G(w, aa, batch)[0]
        ahead = axpy(-lr, gw, w)
        return np_CE(ahead if shift is None else axpy(1.0, shift, ahead), clean)

    want = fd_grad(outer, a, h=1e-4)
    got = bilevel.mlc_meta_gradient(
        as_jax(w),
        as_jax(a),
        as_jax(batch),
        as_jax(clean),
        main_fn,
        meta_fn,
        lr=lr,
        lookahead_shift=None if shift is None else as_jax(shift),
    )
    close(got, want, rtol=1e-4)


def count_ops(f, *args) -> dict[str, int]:
    """Matrix products and transposes in the traced program of f (nested jaxprs included)."""
    text = str(jax.make_jaxpr(f)(*args))
    return {op: text.count(op) for op in ("dot_general", "transpose")}


def test_mlc_meta_gradient_has_no_double_backward():
    """The hypergradient takes one JVP of G in w, differentiated in alpha: its traced program has
    fewer matrix products and transposes than the same hypergradient by reverse over reverse
    (grad in alpha of <grad_w G(w, alpha), g'>), which transposes the main model's backward pass.

    XLA compiles both to about the same arithmetic (the outer transpose of a backward pass is a
    forward pass of tangents): the saving is in the traced program, not in the FLOPs.
    """
    w, a, batch, clean = init(0)
    w, a = as_jax(w), as_jax(a)
    lr = 0.1

    def ours(w, a):
        return bilevel.mlc_meta_gradient(w, a, batch, clean, main_fn, meta_fn, lr=lr)

    def reverse_over_reverse(w, a):
        def grad_g(a):
            return jax.grad(bilevel.lower_loss)(w, a, batch, main_fn, meta_fn)

        ahead = bilevel.sgd_step(w, grad_g(a), lr)
        g_prime = jax.grad(lambda v: bilevel.upper_loss(v, a, clean, main_fn, meta_fn, 1.0))(ahead)
        g_prime = jax.lax.stop_gradient(g_prime)
        return jax.grad(lambda a: -lr * bilevel.tree_vdot(grad_g(a), g_prime))(a)

    close(ours(w, a), reverse_over_reverse(w, a), rtol=1e-10)  # the same quantity
    mine, reference = count_ops(ours, w, a), count_ops(reverse_over_reverse, w, a)
    assert mine["dot_general"] < reference["dot_general"], (mine, reference)
    assert mine["transpose"] < reference["transpose"], (mine, reference)
