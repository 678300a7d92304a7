"""PMW-Net: the Beta KL and sampler, the meta objective against its definition computed by hand
(fixed noise), the meta gradient against finite differences (float64), the prior, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import case_ids, check_bad_input
from scipy import integrate, special, stats
from test_mwnet import (
    D,
    TinyNet,
    as_jax,
    assert_trees_close,
    blobs,
    fd_grad,
    float64_problem,
    linear_problem,
    np_lookahead,
    np_losses,
    np_mlp,
)

from ebomlc_jax import bilevel, methods
from ebomlc_jax.methods import mwnet, pmwnet

BAD_INPUT = [
    ({"method.name": "pmwnet", "method.pmwnet.hidden_dim": 0}, r"pmwnet\.hidden_dim=0 .*\[1, inf"),
    ({"method.name": "pmwnet", "method.pmwnet.net_lr": -1e-3}, r"pmwnet\.net_lr=-0\.001 .*\(0,"),
    (
        {"method.name": "pmwnet", "method.pmwnet.net_weight_decay": -1.0},
        r"pmwnet\.net_weight_decay=-1\.0 .*a number in \[0, inf\)",
    ),
    ({"method.name": "pmwnet", "method.pmwnet.kl_weight": -0.1}, r"kl_weight=-0\.1 .*\[0, inf\)"),
    (
        {"method.name": "pmwnet", "method.pmwnet.main_weights": "median"},
        r"pmwnet\.main_weights='median' .*'sample', 'mean'",
    ),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUT, ids=case_ids(BAD_INPUT))
def test_bad_input_is_a_config_error_before_any_compute(overrides, message, tmp_path, monkeypatch):
    check_bad_input(overrides, message, tmp_path, monkeypatch)


def np_kl(a, b, a0, b0):
    """KL(Beta(a, b) || Beta(a0, b0)), the closed form in SciPy."""
    return (
        special.betaln(a0, b0)
        - special.betaln(a, b)
        + (a - a0) * special.digamma(a)
        + (b - b0) * special.digamma(b)
        + (a0 - a + b0 - b) * special.digamma(a + b)
    )


def method_of(**kw):
    return methods.create(
        "pmwnet",
        main_model=TinyNet(),
        lr_schedule=optax.constant_schedule(kw.pop("lr", 0.1)),
        **kw,
    )


def float64_theta(method, seed):
    theta = method.meta_model.init(jax.random.key(seed), jnp.zeros(1))["params"]
    return jax.tree.map(lambda x: np.asarray(x, np.float64), theta)


# ---------------------------------------------------------------- Beta pieces
@pytest.mark.parametrize("a,b,a0,b0", [(2.0, 3.0, 1.0, 1.0), (1.5, 1.2, 2.5, 1.1)])
def test_beta_kl_is_the_integral_of_its_definition(a, b, a0, b0):
    p, q = stats.beta(a, b), stats.beta(a0, b0)
    want = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), 0, 1)[0]
    with jax.enable_x64(True):
        got = pmwnet.beta_kl(*(jnp.asarray(x) for x in (a, b, a0, b0)))
    np.testing.assert_allclose(got, want, rtol=1e-7)
    np.testing.assert_allclose(np_kl(a, b, a0, b0), want, rtol=1e-7)


def test_beta_sample_is_a_gamma_ratio_in_the_unit_interval_with_the_beta_mean():
    a = jnp.array([0.3, 1.0, 2.0, 5.0])
    b = jnp.array([0.5, 1.0, 4.0, 0.8])
    key = jax.random.key(0)
    v = pmwnet.beta_sample(key, a, b)
    k_a, k_b = jax.random.split(key)
    g_a, g_b = jax.random.gamma(k_a, a), jax.random.gamma(k_b, b)
    np.testing.assert_allclose(v, g_a / (g_a + g_b), rtol=1e-5)
    draws = jax.vmap(lambda k: pmwnet.beta_sample(k, a, b))(jax.random.split(key, 20000))
    # float32 rounds the tails of Beta(0.3, 0.5) to 0 and 1 (PyTorch clamps them likewise).
    assert bool(jnp.all((draws >= 0) & (draws <= 1)))
    assert bool(jnp.all((draws[:, 2] > 0) & (draws[:, 2] < 1)))
    np.testing.assert_allclose(jnp.mean(draws, axis=0), a / (a + b), atol=0.01)


# ---------------------------------------------------------------- the meta objective
def np_objective(theta, w, noisy, clean, lr, coefficient, prior, log_gammas):
    """J = CE_clean(w - lr (1/n) sum_i v_i grad l_i(w)) + coefficient * mean_i KL_i, v_i =
    G_a / (G_a + G_b) from the given gamma draws (the fixed noise)."""
    losses = np_losses(w, noisy)
    a, b = (np_mlp(theta[k], losses, "softplus") for k in ("alpha", "beta"))
    v = 1 / (1 + np.exp(log_gammas[1] - log_gammas[0]))
    ce = np.mean(np_losses(np_lookahead(w, noisy, v, lr), clean))
    return ce + coefficient * np.mean(np_kl(a, b, *prior)), v


@pytest.mark.parametrize(
    "step,kl_times_lr,prior",
    [
        (0, True, (1.0, 1.0)),  # the first step: Beta(1, 1)
        (1, True, (0.7, 1.3)),  # later: the stored prior
        (4, True, (1.0, 1.0)),  # an epoch's first step (4 steps per epoch): Beta(1, 1) again
        (1, False, (0.7, 1.3)),  # lambda without the lr factor (Eq. 26 as written)
    ],
)
def test_meta_objective_equals_its_definition_by_hand(step, kl_times_lr, prior):
    w, noisy, clean = float64_problem(0)
    lr, kl_weight = 0.3, 0.05
    method = method_of(
        lr=lr, steps_per_epoch=4, hidden_dim=3, kl_weight=kl_weight, kl_times_lr=kl_times_lr
    )
    with jax.enable_x64(True):
        theta = float64_theta(method, 1)
        state = {"step": jnp.asarray(step), "prior": {"a": jnp.asarray(0.7), "b": jnp.asarray(1.3)}}
        key = jax.random.key(7)
        weigh = method.weigh(state, jnp.asarray(lr), key)
        losses_fn, upper = linear_problem(as_jax(noisy), as_jax(clean))
        _, info = mwnet.reweighting_hypergradient(
            losses_fn, upper, as_jax(w), as_jax(theta), weigh, lr=lr
        )
        # The fixed noise: the two gamma draws of each example under this key.
        losses = np_losses(w, noisy)
        a, b = (np_mlp(theta[k], losses, "softplus") for k in ("alpha", "beta"))
        k_a, k_b = jax.random.split(key)
        log_gammas = [
            np.asarray(jax.random.loggamma(k, jnp.asarray(s))) for k, s in ((k_a, a), (k_b, b))
        ]
    coefficient = kl_weight * (lr if kl_times_lr else 1.0)
    want, v = np_objective(theta, w, noisy, clean, lr, coefficient, prior, log_gammas)
    np.testing.assert_allclose(info["weights"], v, rtol=1e-10)
    np.testing.assert_allclose(info["F_lookahead"] + info["penalty"], want, rtol=1e-10)
    kl = np.mean(np_kl(a, b, *prior))
    np.testing.assert_allclose(info["penalty"], coefficient * kl, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_meta_gradient_equals_finite_differences(seed):
    """The reparameterised gradient is that of J(theta) with each gamma draw's quantile held
    fixed (implicit reparameterisation): G_a(theta) = P^-1(a(theta), u_a), u_a = P(a0, G_a0)
    with P the regularised incomplete gamma function; nested finite differences in float64."""
    w, noisy, clean = float64_problem(seed)
    lr, kl_weight, prior = 0.5, 0.5, (0.7, 1.3)
    method = method_of(lr=lr, steps_per_epoch=4, hidden_dim=3, kl_weight=kl_weight)
    with jax.enable_x64(True):
        theta = float64_theta(method, seed)
        state = {"step": jnp.asarray(1), "prior": {"a": jnp.asarray(0.7), "b": jnp.asarray(1.3)}}
        key = jax.random.key(seed + 3)
        weigh = method.weigh(state, jnp.asarray(lr), key)
        losses_fn, upper = linear_problem(as_jax(noisy), as_jax(clean))
        got, _ = mwnet.reweighting_hypergradient(
            losses_fn, upper, as_jax(w), as_jax(theta), weigh, lr=lr
        )
        losses = np_losses(w, noisy)
        shapes = [np_mlp(theta[k], losses, "softplus") for k in ("alpha", "beta")]
        keys = jax.random.split(key)
        draws = [
            np.exp(np.asarray(jax.random.loggamma(k, jnp.asarray(s))))
            for k, s in zip(keys, shapes, strict=True)
        ]
    quantiles = [special.gammainc(s, g) for s, g in zip(shapes, draws, strict=True)]

    def outer(th):
        a, b = (np_mlp(th[k], losses, "softplus") for k in ("alpha", "beta"))
        log_gammas = [
            np.log(special.gammaincinv(s, u)) for s, u in zip((a, b), quantiles, strict=True)
        ]
        return np_objective(th, w, noisy, clean, lr, kl_weight * lr, prior, log_gammas)[0]

    assert_trees_close(got, fd_grad(outer, theta), rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- the step
@pytest.mark.parametrize("main_weights", ["sample", "mean"])
def test_steps_keep_the_batch_mean_prior_and_restart_it_each_epoch(main_weights):
    """After each step the prior is Beta(mean a', mean b') of the updated nets on that batch;
    each epoch's first step uses Beta(1, 1). With main_weights="mean" the main step's weights are
    a' / (a' + b') (Eq. 25); with "sample" a Beta draw in (0, 1)."""
    method = method_of(steps_per_epoch=2, main_weights=main_weights)
    step = jax.jit(method.step)
    state = method.init(jax.random.key(0), jnp.zeros((1, D)))
    stored = None
    for i in range(3):
        noisy, clean = blobs(jax.random.key(10 + i), 16, 0.4), blobs(jax.random.key(20 + i), 8)
        old = state
        state, meas = step(state, noisy, clean)
        used = (1.0, 1.0) if i % 2 == 0 else stored
        np.testing.assert_allclose([meas["prior_a"], meas["prior_b"]], used, rtol=1e-6)
        logits = method.apply_fn(old)(old["main"]["params"], noisy["image"])[0]
        losses = bilevel.cross_entropies(logits, noisy["label"])
        a, b = method.meta_model.apply({"params": state["meta"]["params"]}, losses)
        stored = (float(jnp.mean(a)), float(jnp.mean(b)))
        np.testing.assert_allclose([state["prior"]["a"], state["prior"]["b"]], stored, rtol=1e-5)
        mean_of_means = float(jnp.mean(a / (a + b)))
        if main_weights == "mean":
            np.testing.assert_allclose(meas["mean_weight"], mean_of_means, rtol=1e-5)
        else:
            assert 0 < float(meas["mean_weight"]) < 1
            assert abs(float(meas["mean_weight"]) - mean_of_means) > 1e-4
    assert method.variant == (None if main_weights == "sample" else "mean")
