"""GLC: C-hat from a model whose softmax is known, the phase-2 loss and step by hand, the phase
boundary (fresh network, C-hat set, same state structure), the per-phase schedule, its checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import build, check_bad_input, tiny
from jax.flatten_util import ravel_pytree

from ebomlc_jax import bilevel, models, train
from ebomlc_jax.errors import ConfigError
from ebomlc_jax.methods import common, glc

K = 3
MU, WD = 0.9, 5e-4
# A transition matrix to recover (rows: true class, columns: noisy label).
T = np.array([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05], [0.3, 0.3, 0.4]])


@functools.cache
def tiny_glc(num_epochs=4, steps_per_epoch=2, cls=glc.GLC):
    """A GLC around a tiny ResNet: phase 1 is epochs 0-1 (steps 0-3), phase 2 epochs 2-3."""
    sched = optax.piecewise_constant_schedule(0.1, {6: 0.1})  # decays at 3/4 of the 8 steps
    model = models.CifarResNet(K, blocks_per_stage=1, widths=(4, 8))
    return cls(
        main_model=model, lr_schedule=sched, num_epochs=num_epochs, steps_per_epoch=steps_per_epoch
    )


def batches(seed, n=6, m=4):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    noisy = {
        "image": jax.random.normal(k1, (n, 8, 8, 3)),
        "label": jax.random.randint(k2, (n,), 0, K),
    }
    clean = {"image": jax.random.normal(k3, (m, 8, 8, 3)), "label": jnp.arange(m) % K}
    return noisy, clean


def trained_state(method, steps):
    """The state after `steps` steps of the jitted step (nonzero momentum, moved parameters), the
    boundary hook run on a clean batch when the steps cross it."""
    state = method.init(jax.random.key(0), batches(0)[0]["image"][:1])
    step = jax.jit(method.step)
    for i in range(steps):
        noisy, clean = batches(10 + i)
        if i == method.boundary:
            state = method.begin_epoch(state, i, method.per_example(state, clean))
        state, _ = step(state, noisy, clean)
    return state


# ---------------------------------------------------------------- C-hat
def test_c_hat_rows_are_the_mean_softmax_of_each_trusted_class():
    probs = jnp.array([[0.6, 0.4, 0.0], [0.8, 0.0, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    labels = jnp.array([0, 0, 1, 2])
    want = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]
    np.testing.assert_allclose(glc.estimate_transition(probs, labels, K), want, atol=1e-7)
    # A class without trusted examples gets zeros, not NaN.
    np.testing.assert_array_equal(glc.estimate_transition(probs, labels * 0, K)[1:], 0.0)


class KnownSoftmax(glc.GLC):
    """GLC whose evaluated network is replaced by a known function of the image: pixel (0, 0, 0)
    holds the true class k, pixel (0, 0, 1) a sign s, and the softmax is T[k] + s * d, so each
    class's mean over a +/- pair is exactly T[k]."""

    def predict(self, state, images):
        k = images[:, 0, 0, 0].astype(jnp.int32)
        s = images[:, 0, 0, 1]
        d = jnp.array([0.04, -0.03, -0.01])
        return jnp.log(jnp.asarray(T, jnp.float32)[k] + s[:, None] * d)


def test_the_boundary_hook_recovers_a_known_transition_matrix():
    method = tiny_glc(cls=KnownSoftmax)
    classes = np.repeat(np.arange(K), 4)  # 4 trusted examples per class, in +/- pairs
    images = np.zeros((len(classes), 8, 8, 3), np.float32)
    images[:, 0, 0, 0] = classes
    images[:, 0, 0, 1] = np.tile([1.0, -1.0], len(classes) // 2)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(classes)}
    state = method.init(jax.random.key(0), batch["image"][:1])
    # The epoch pass runs per_example batch by batch; two batches here.
    outs = [method.per_example(state, {k: v[i::2] for k, v in batch.items()}) for i in (0, 1)]
    outputs = jax.tree.map(lambda *x: jnp.concatenate(x), *outs)
    state = method.begin_epoch(state, method.phase1_epochs, outputs)
    np.testing.assert_allclose(state["c_hat"], T, atol=1e-6)


def test_per_example_is_the_eval_mode_softmax_of_the_network():
    method = tiny_glc()
    state = trained_state(method, 2)  # BN running statistics away from their initial values
    _, clean = batches(3)
    out = method.per_example(state, clean)
    logits, _ = method.main_model.apply(state["main"], clean["image"], train=False)
    np.testing.assert_allclose(out["probs"], jax.nn.softmax(logits), rtol=1e-6)
    np.testing.assert_array_equal(out["label"], clean["label"])


# ---------------------------------------------------------------- losses and steps by hand
def test_forward_corrected_nll_is_its_definition():
    logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 0.3, -2.0]])
    labels = jnp.array([1, 2])
    p = np.exp(np.asarray(logits, np.float64))
    p /= p.sum(1, keepdims=True)
    want = [-np.log(sum(p[i, k] * T[k, labels[i]] for k in range(K))) for i in range(2)]
    np.testing.assert_allclose(glc.forward_corrected_nll(logits, jnp.asarray(T), labels), want)
    # C-hat = I: the plain cross-entropy.
    np.testing.assert_allclose(
        glc.forward_corrected_nll(logits, jnp.eye(K), labels),
        bilevel.cross_entropies(logits, labels),
        rtol=1e-6,
    )


@pytest.mark.parametrize("phase", [1, 2])
def test_a_step_of_each_phase_by_hand(phase):
    """Phase 1: CE on the noisy batch, the clean batch unused. Phase 2: (sum of -log (softmax C)_y~
    on the noisy batch + sum of CE on the clean one) / (n + m), BN running statistics updated by
    the noisy pass, then the clean pass. PyTorch's SGD at the phase's lr."""
    method = tiny_glc()
    # The last step of each phase (steps 0-3: phase 1, 4-7: phase 2), where each phase's
    # schedule has decayed (the whole run's would not have at step 3).
    state = trained_state(method, 3 if phase == 1 else 7)
    state = {**state, "c_hat": jnp.asarray(T, jnp.float32)}
    noisy, clean = batches(7)
    w, unravel = ravel_pytree(state["main"]["params"])
    buf, _ = ravel_pytree(common.momentum_buffer(state["main_opt"]))
    model = method.main_model

    def fwd(wv, images, stats):
        (logits, _), new = model.apply(
            {"params": unravel(wv), "batch_stats": stats}, images, train=True, mutable=True
        )
        return logits, new["batch_stats"]

    def ce_sum(logits, y):
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

    def loss(wv):
        logits, stats = fwd(wv, noisy["image"], state["main"]["batch_stats"])
        if phase == 1:
            return ce_sum(logits, noisy["label"]) / len(noisy["label"]), stats
        p = jax.nn.softmax(logits) @ state["c_hat"]
        corrected = -jnp.sum(jnp.log(p[jnp.arange(len(p)), noisy["label"]]))
        clean_logits, stats = fwd(wv, clean["image"], stats)
        return (corrected + ce_sum(clean_logits, clean["label"])) / 10, stats

    (value, stats), g = jax.value_and_grad(loss, has_aux=True)(w)
    lr = 0.01  # the phase's 4 steps stretched over the 8-step schedule: decayed at its 4th
    new_buf = MU * buf + g + WD * w
    new_w = w - lr * new_buf

    new_state, meas = jax.jit(method.step)(state, noisy, clean)
    np.testing.assert_allclose(ravel_pytree(new_state["main"]["params"])[0], new_w, atol=1e-6)
    for x, y in zip(
        jax.tree.leaves(new_state["main"]["batch_stats"]), jax.tree.leaves(stats), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert float(meas["loss"]) == pytest.approx(float(value), rel=1e-5)
    assert float(meas["lr"]) == pytest.approx(lr)
    assert float(meas["phase"]) == phase
    assert float(meas["c_hat_diagonal_mean"]) == pytest.approx(np.trace(T) / K)


def test_each_phase_runs_the_whole_schedule_compressed():
    """The paper's recipe on 12 epochs of 10 steps: lr x0.1 at 2/3 and 5/6 of each 6-epoch phase
    (epochs 4 and 5, then 10 and 11), like train_ours.py restarting its schedule for phase 2."""
    config = tiny({"method.name": "glc", "num_epochs": 12, "optim.decay_at": (2 / 3, 5 / 6)})
    optim = config.optim
    method = glc.GLC(
        main_model=models.CifarResNet(K, blocks_per_stage=1, widths=(4, 8)),
        lr_schedule=common.lr_schedule(optim, 12, 10),
        num_epochs=12,
        steps_per_epoch=10,
    )
    lrs = np.array([float(method.phase_lr(s)) for s in range(120)]).reshape(12, 10)
    assert (lrs == lrs[:, :1]).all()  # constant within each epoch
    np.testing.assert_allclose(lrs[:, 0], [0.1] * 4 + [0.01, 0.001] + [0.1] * 4 + [0.01, 0.001])
    assert method.boundary == 60 and method.epoch_pass(6) == "clean"
    assert [e for e in range(12) if method.epoch_pass(e)] == [6]


# ---------------------------------------------------------------- the boundary
def test_the_boundary_puts_back_the_initial_network_and_sets_c_hat():
    method = tiny_glc()
    fresh = method.init(jax.random.key(0), batches(0)[0]["image"][:1])
    state = trained_state(method, 4)  # the whole of phase 1
    assert not np.array_equal(*(ravel_pytree(s["main"]["params"])[0] for s in (state, fresh)))
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(1), (9, K)))
    labels = jnp.arange(9) % K
    hook = jax.jit(method.begin_epoch, donate_argnums=0)  # as the epoch runner compiles it
    kept = jax.tree.map(jnp.copy, state)
    after = hook(state, method.phase1_epochs, {"probs": probs, "label": labels})

    # Same structure, shapes and dtypes: checkpoints written before and after restore alike.
    assert jax.tree.structure(after) == jax.tree.structure(kept)
    for x, y in zip(jax.tree.leaves(after), jax.tree.leaves(kept), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
    for a, b in zip(jax.tree.leaves(after["main"]), jax.tree.leaves(fresh["main"]), strict=True):
        np.testing.assert_array_equal(a, b)  # parameters and BN statistics of the init
    for a in jax.tree.leaves(common.momentum_buffer(after["main_opt"])):
        assert not np.any(np.asarray(a))
    np.testing.assert_array_equal(after["step"], kept["step"])
    count = optax.tree_utils.tree_get(after["main_opt"], "count")
    assert int(count) == int(kept["step"]) == method.boundary  # phase_lr reads the step count
    np.testing.assert_allclose(after["c_hat"], glc.estimate_transition(probs, labels, K), rtol=1e-6)
    assert np.trace(after["c_hat"]) > 0
    # Training goes on from the fresh network with C-hat, and "init" never moves.
    after, meas = jax.jit(method.step)(after, *batches(20))
    assert float(meas["phase"]) == 2.0
    for a, b in zip(jax.tree.leaves(after["init"]), jax.tree.leaves(fresh["init"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_resume_test_crosses_the_boundary():
    """tests/test_resume.py runs 4 epochs of the tiny config and interrupts before epoch 2: with
    the default phase1_fraction the C-hat pass and the fresh network come after the interruption,
    so that test resumes across the phase boundary (its bitwise comparison covers GLC)."""
    config = tiny({"method.name": "glc", "num_epochs": 4})
    method, _ = build(config)
    assert method.phase1_epochs == 2 and method.epoch_pass(2) == "clean"


# ---------------------------------------------------------------- configuration
def test_glc_needs_an_epoch_in_each_phase(tmp_path):
    with pytest.raises(ConfigError, match=r"phase1_fraction=0\.5 with num_epochs=1 .*phase 1"):
        train.train_and_evaluate(tiny({"method.name": "glc", "num_epochs": 1}), str(tmp_path))
    assert not (tmp_path / "config.json").exists()
    method = tiny_glc()
    with pytest.raises(ConfigError, match=r"phase1_fraction=0\.9 with num_epochs=3"):
        glc.GLC(  # round(0.9 * 3) = 3: no epoch left for phase 2
            main_model=method.main_model,
            lr_schedule=method.lr_schedule,
            num_epochs=3,
            steps_per_epoch=2,
            phase1_fraction=0.9,
        )


BAD_INPUT = [
    (
        {"method.name": "glc", "method.glc.phase1_fraction": 0.0},
        r"method\.glc\.phase1_fraction=0\.0 is not allowed; allowed values: a number in \(0, 1\)",
    ),
    (
        {"method.name": "glc", "method.glc.phase1_fraction": 1.0},
        r"method\.glc\.phase1_fraction=1\.0 .*a number in \(0, 1\)",
    ),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUT)
def test_bad_glc_input_is_a_config_error_before_any_compute(
    overrides, message, tmp_path, monkeypatch
):
    check_bad_input(overrides, message, tmp_path, monkeypatch)
