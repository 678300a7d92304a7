"""DivideMix: the GMM division (against sklearn), co-divide, the targets, the warm-up step by
hand, the lambda_u ramp, the paper's hyperparameters per setting, evaluation, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import check_bad_input, tiny
from sklearn.mixture import GaussianMixture

from ebomlc_jax import methods, models, train
from ebomlc_jax.methods import dividemix as dm
from ebomlc_jax.methods import gmm

K, N, B, C, SPE = 4, 16, 8, 4, 2  # classes, |D'|, noisy and clean batch, steps per epoch
# One configuration for the step tests (one compile): warm-up is epoch 0 (steps 0-1).
clean_probability = jax.jit(gmm.clean_probability)
SHARED = dict(warmup_epochs=1, rampup_epochs=2, lambda_u=8.0, confidence_penalty=0.5)

BAD_INPUT = [
    (
        {"method.name": "dividemix", "method.dividemix.warmup_epochs": -1},
        r"method\.dividemix\.warmup_epochs=-1 is not allowed; allowed values: an integer in "
        r"\[0, inf\)",
    ),
    (
        {"method.name": "dividemix", "method.dividemix.rampup_epochs": 0},
        r"method\.dividemix\.rampup_epochs=0 .*an integer in \[1, inf\)",
    ),
    (
        {"method.name": "dividemix", "method.dividemix.lambda_u": -1.0},
        r"method\.dividemix\.lambda_u=-1\.0 .*a number in \[0, inf\)",
    ),
    (
        {"method.name": "dividemix", "method.dividemix.p_threshold": 1.5},
        r"method\.dividemix\.p_threshold=1\.5 .*a number in \[0, 1\]",
    ),
    (
        {"method.name": "dividemix", "method.dividemix.temperature": 0.0},
        r"method\.dividemix\.temperature=0\.0 .*a number in \(0, inf\)",
    ),
    (
        {"method.name": "dividemix", "method.dividemix.alpha": 0.0},
        r"method\.dividemix\.alpha=0\.0 .*a number in \(0, inf\)",
    ),
    (
        {"method.name": "dividemix", "method.dividemix.confidence_penalty": -0.5},
        r"method\.dividemix\.confidence_penalty=-0\.5 .*a number in \[0, inf\)",
    ),
    (
        {"method.name": "dividemix", "method.dividemix.loss_average_epochs": 0},
        r"method\.dividemix\.loss_average_epochs=0 .*an integer in \[1, inf\)",
    ),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUT)
def test_bad_hyperparameter_is_a_config_error_before_any_compute(
    overrides, message, tmp_path, monkeypatch
):
    check_bad_input(overrides, message, tmp_path, monkeypatch)


@functools.cache
def method_and_step(**kw):
    """A tiny DivideMix (ResNet of widths 4/8, 4 classes) and its jitted step, built once."""
    fields = dict(num_noisy=N, steps_per_epoch=SPE, num_epochs=4, augment_pad=1, **SHARED)
    method = methods.create(
        "dividemix",
        main_model=models.CifarResNet(K, blocks_per_stage=1, widths=(4, 8)),
        lr_schedule=optax.constant_schedule(0.1),
        **{**fields, **kw},
    )
    return method, jax.jit(method.step)


def batches(seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    noisy = {
        "image": jax.random.normal(k[0], (B, 8, 8, 3)),
        "label": jax.random.randint(k[1], (B,), 0, K),
        "true_label": jax.random.randint(k[2], (B,), 0, K),
        "index": jax.random.permutation(k[3], N)[:B].astype(jnp.int32),
    }
    clean = {"image": jax.random.normal(k[4], (C, 8, 8, 3)), "label": jnp.arange(C) % K}
    return noisy, clean


def fresh(method, step=0):
    state = method.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    return {**state, "step": jnp.int32(step)}


# ---------------------------------------------------------------- the division
def two_populations(n=49_000, clean_share=0.7, seed=0):
    rng = np.random.default_rng(seed)
    n_clean = int(n * clean_share)
    x = np.concatenate([rng.normal(0.15, 0.05, n_clean), rng.normal(0.7, 0.1, n - n_clean)])
    return x.astype(np.float32), np.arange(n) < n_clean


def test_gmm_recovers_two_loss_populations_as_sklearn_does():
    x, is_clean = two_populations()
    mix = jax.jit(gmm.fit)(jnp.asarray(x))
    order = np.argsort(np.asarray(mix.means))
    means, weights = np.asarray(mix.means)[order], np.asarray(mix.weights)[order]
    stds = np.sqrt(np.asarray(mix.variances)[order] - gmm.REG_COVAR)
    np.testing.assert_allclose(means, [0.15, 0.7], atol=0.005)
    np.testing.assert_allclose(weights, [0.7, 0.3], atol=0.005)
    np.testing.assert_allclose(stds, [0.05, 0.1], atol=0.005)

    sk = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)
    sk.fit(x[:, None])
    sk_order = np.argsort(sk.means_[:, 0])
    np.testing.assert_allclose(means, sk.means_[sk_order, 0], atol=1e-4)
    np.testing.assert_allclose(weights, sk.weights_[sk_order], atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(mix.variances)[order], sk.covariances_[sk_order, 0, 0], rtol=1e-3
    )
    prob = np.asarray(clean_probability(jnp.asarray(x)))
    sk_prob = sk.predict_proba(x[:, None])[:, sk.means_[:, 0].argmin()]
    assert np.max(np.abs(prob - sk_prob)) < 1e-3
    assert np.mean((prob > 0.5) == is_clean) > 0.99


def test_min_max_normalisation_and_equal_losses():
    x = jnp.array([2.0, 4.0, 3.0])
    np.testing.assert_allclose(gmm.min_max_normalize(x), [0.0, 1.0, 0.5])
    same = gmm.min_max_normalize(jnp.full(5, 0.7))
    assert np.all(np.asarray(same) == 0)
    assert np.all(np.isfinite(np.asarray(clean_probability(same))))


def test_begin_epoch_averages_the_last_normalised_losses_into_each_gmm():
    method, _ = method_and_step(loss_average_epochs=2)
    state = fresh(method, SPE)
    rng = np.random.default_rng(1)
    outs = [{n: jnp.asarray(rng.gamma(2.0, 1.0, N), jnp.float32) for n in dm.NETS}]
    outs.append({n: jnp.asarray(rng.gamma(2.0, 1.0, N), jnp.float32) for n in dm.NETS})
    begin = jax.jit(method.begin_epoch)
    first = begin(state, 1, outs[0])  # one epoch of losses so far: those alone
    second = begin(first, 2, outs[1])
    for n in dm.NETS:
        norm = [gmm.min_max_normalize(o[n]) for o in outs]
        np.testing.assert_allclose(first["clean_prob"][n], clean_probability(norm[0]), 1e-6)
        mean = (norm[0] + norm[1]) / 2
        np.testing.assert_allclose(second["clean_prob"][n], clean_probability(mean), 1e-5)
    assert int(second["divisions"]) == 2


def test_epoch_pass_starts_with_the_first_epoch_after_warm_up():
    method, _ = method_and_step(warmup_epochs=3)
    assert [method.epoch_pass(e) for e in range(5)] == [None, None, None, "noisy", "noisy"]


# ---------------------------------------------------------------- targets and losses
def test_co_refined_co_guessed_and_mixed_targets_are_distributions():
    k = jax.random.split(jax.random.key(3), 5)
    own = jax.nn.softmax(jax.random.normal(k[0], (2, B, K)) * 3)
    other = jax.nn.softmax(jax.random.normal(k[1], (2, B, K)) * 3)
    w = jax.random.uniform(k[2], (B,))
    onehot = jax.nn.one_hot(jax.random.randint(k[3], (B,), 0, K), K)
    refined = dm.co_refine(own, w, onehot, 0.5)
    guessed = dm.co_guess(own, other, 0.5)
    targets = jnp.concatenate([refined, guessed])
    _, mixed = dm.mixup(k[4], jnp.zeros((2 * B, 3)), targets, 4.0)
    for t in (refined, guessed, mixed):
        assert np.all(np.asarray(t) >= 0)
        np.testing.assert_allclose(np.sum(np.asarray(t), axis=-1), 1.0, rtol=1e-6)
    # w = 1 (the clean set) gives the given label exactly; T = 1 leaves a mean unsharpened.
    np.testing.assert_array_equal(dm.co_refine(own, jnp.ones(B), onehot, 0.5), onehot)
    np.testing.assert_allclose(dm.co_guess(own, other, 1.0), (own.sum(0) + other.sum(0)) / 4, 1e-6)


def test_mixup_mixes_inputs_and_targets_alike_favouring_each_rows_own_example():
    inputs, onehot = jnp.arange(6.0)[:, None] * jnp.ones((6, 2)), jnp.eye(6)
    for seed in range(5):
        mixed, targets = dm.mixup(jax.random.key(seed), inputs, onehot, 0.5)
        assert np.all(np.diag(np.asarray(targets)) >= 0.5)  # lambda = max(lambda, 1 - lambda)
        np.testing.assert_allclose(mixed[:, 0], targets @ jnp.arange(6.0), rtol=1e-6)


def test_co_divide_trains_each_network_on_the_others_division():
    method, step = method_and_step()
    state = fresh(method, SPE)  # the first step after warm-up
    # main's own GMM calls everything noisy, peer's everything clean: main trains with all of
    # the noisy batch labelled (peer's division), peer with none of it (main's division).
    state["clean_prob"] = {"main": jnp.zeros(N), "peer": jnp.ones(N)}
    _, meas = step(state, *batches())
    assert float(meas["labelled_main"]) == 1.0 and float(meas["labelled_peer"]) == 0.0
    assert float(meas["Lu_main"]) == 0.0  # no unlabelled rows at all
    assert float(meas["Lu_peer"]) > 0.0 and float(meas["Lx_peer"]) > 0.0  # D alone labelled
    assert float(meas["warmup"]) == 0.0
    new, _ = step(state, *batches())
    for n in dm.NETS:  # both networks take a step
        moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state[n], new[n])
        assert all(jax.tree.leaves(moved["params"]))


def test_mislabelled_share_of_the_labelled_part_is_measured_from_true_labels():
    method, step = method_and_step()
    state = fresh(method, SPE)
    noisy, clean = batches()
    labelled = (jnp.arange(N) % 2 == 0).astype(jnp.float32)  # peer's division for main
    state["clean_prob"] = {"main": jnp.zeros(N), "peer": labelled}
    _, meas = step(state, noisy, clean)
    mask = np.asarray(labelled)[np.asarray(noisy["index"])] > 0.5
    wrong = np.asarray(noisy["label"] != noisy["true_label"])
    assert float(meas["labelled_main"]) == pytest.approx(mask.mean())
    assert float(meas["labelled_mislabelled_main"]) == pytest.approx(
        (mask & wrong).sum() / max(mask.sum(), 1)
    )


def test_warm_up_step_is_ce_plus_the_weighted_negative_entropy_by_hand():
    method, step = method_and_step()
    state = fresh(method)
    noisy, clean = batches()
    new, meas = step(state, noisy, clean)
    images = np.concatenate([noisy["image"], clean["image"]])
    labels = np.concatenate([noisy["label"], clean["label"]])

    def by_hand(params, network):
        variables = {"params": params, "batch_stats": state[network]["batch_stats"]}
        (logits, _), _ = method.main_model.apply(
            variables, images, train=True, mutable=["batch_stats"]
        )
        logp = jax.nn.log_softmax(logits)
        ce = -jnp.mean(logp[jnp.arange(len(labels)), labels])
        return ce + 0.5 * jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))

    for n in dm.NETS:
        params = state[n]["params"]
        assert float(meas[f"loss_{n}"]) == pytest.approx(float(by_hand(params, n)), rel=1e-5)
        grads = jax.jit(jax.grad(by_hand), static_argnums=1)(params, n)
        # First SGD step: momentum buffer = g + wd w, update -lr times it.
        want = jax.tree.map(lambda w, g: w - 0.1 * (g + 5e-4 * w), params, grads)
        for a, b in zip(jax.tree.leaves(new[n]["params"]), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(meas["warmup"]) == 1.0 and float(meas["lambda_u"]) == 0.0
    assert int(new["step"]) == 1


def test_lambda_u_ramps_linearly_over_rampup_epochs_after_warm_up():
    ramp = [float(dm.linear_rampup(e, 10, 16, 25.0)) for e in (5, 10, 14, 18, 26, 40)]
    assert ramp == pytest.approx([0.0, 0.0, 6.25, 12.5, 25.0, 25.0])
    method, step = method_and_step()
    for at in (SPE, SPE + 1, 2 * SPE + 1, 4 * SPE):  # epoch + batch fraction, as the code's
        _, meas = step(fresh(method, at), *batches())
        want = 8.0 * min(max((at / SPE - 1) / 2, 0.0), 1.0)
        assert float(meas["lambda_u"]) == pytest.approx(want)


# ---------------------------------------------------------------- configuration, evaluation
@pytest.mark.parametrize(
    "dataset, kind, rate, want",
    [
        ("cifar10", "uniform", 0.0, (10, 0.0, 0.5, 0.0, 1)),
        ("cifar10", "uniform", 0.2, (10, 0.0, 0.5, 0.0, 1)),
        ("cifar10", "uniform", 0.4, (10, 25.0, 0.5, 0.0, 1)),
        ("cifar10", "uniform", 0.8, (10, 25.0, 0.5, 0.0, 1)),
        ("cifar10", "uniform", 0.9, (10, 50.0, 0.6, 0.0, 5)),
        ("cifar10", "flip", 0.4, (10, 0.0, 0.5, 1.0, 1)),
        ("cifar100", "uniform", 0.2, (30, 25.0, 0.5, 0.0, 1)),
        ("cifar100", "uniform", 0.6, (30, 150.0, 0.5, 0.0, 1)),
        ("cifar100", "flip", 0.2, (30, 25.0, 0.5, 1.0, 1)),
        ("cifar100", "pair", 0.4, (30, 150.0, 0.5, 1.0, 1)),
        ("digits", "uniform", 0.6, (1, 25.0, 0.5, 0.0, 1)),
    ],
)
def test_none_takes_the_papers_value_for_the_setting(dataset, kind, rate, want):
    config = tiny({"data.dataset": dataset, "noise.kind": kind, "noise.rate": rate})
    hp = methods.get("dividemix").hyperparameters(config)
    names = ("warmup_epochs", "lambda_u", "p_threshold", "confidence_penalty")
    assert tuple(hp[k] for k in (*names, "loss_average_epochs")) == want
    assert hp["temperature"] == 0.5 and hp["alpha"] == 4.0 and hp["rampup_epochs"] == 16


def test_an_explicit_value_overrides_the_papers():
    config = tiny({"method.dividemix.lambda_u": 3.0, "method.dividemix.warmup_epochs": 2})
    hp = methods.get("dividemix").hyperparameters(config)
    assert hp["lambda_u"] == 3.0 and hp["warmup_epochs"] == 2


@pytest.mark.parametrize("augment", [True, False])
def test_second_view_follows_the_data_augmentation_switch(augment):
    config = tiny({"method.name": "dividemix", "data.augment": augment})
    method = train.build_method(config, 10, 3, None, 100)
    assert method.augment_pad == (config.data.augment_pad if augment else None)


def test_prediction_is_the_log_of_the_mean_softmax_of_both_networks():
    method, _ = method_and_step()
    state = fresh(method)
    state["peer"] = method.init(jax.random.key(7), jnp.zeros((1, 8, 8, 3)))["main"]
    images = batches()[0]["image"]
    heads = method.extra_predictions(state, images)
    mean = (jax.nn.softmax(heads["main"]) + jax.nn.softmax(heads["peer"])) / 2
    np.testing.assert_allclose(jnp.exp(method.predict(state, images)), mean, rtol=1e-5)
    np.testing.assert_allclose(heads["logit_sum"], heads["main"] + heads["peer"])
    assert not np.allclose(heads["main"], heads["peer"])
