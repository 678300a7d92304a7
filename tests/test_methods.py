"""Methods: parameter counts, the jitted steps, and each step against a computation by hand."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from ebomlc_jax import methods, models
from ebomlc_jax.errors import ConfigError
from ebomlc_jax.methods import common

K = 4
MU, WD = 0.9, 5e-4


def tiny_models(dropout=0.3):
    main = models.CifarResNet(K, blocks_per_stage=1, widths=(4, 8))
    meta = models.MetaNet(K, embed_dim=8, hidden_dim=8, dropout_rate=dropout)
    return main, meta


def batches(seed=0, n=8, m=8, size=8):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    noisy = {
        "image": jax.random.normal(k1, (n, size, size, 3)),
        "label": jax.random.randint(k2, (n,), 0, K),
        "true_label": jax.random.randint(k4, (n,), 0, K),
    }
    clean = {"image": jax.random.normal(k3, (m, size, size, 3)), "label": jnp.arange(m) % K}
    return noisy, clean


@functools.cache
def build_and_jit(name, **kw):
    """A method and its jitted step, compiled once per configuration for the whole module."""
    main, meta = tiny_models(kw.pop("dropout", 0.3))
    sched = optax.piecewise_constant_schedule(0.1, {3: 0.1})
    method = methods.create(
        name, main_model=main, meta_model=None if name == "ce" else meta, lr_schedule=sched, **kw
    )
    return method, jax.jit(method.step)


def run_steps(name, n_steps, seed=0, **kw):
    """(method, jitted step, state after n_steps, last measurements)."""
    method, step = build_and_jit(name, **kw)
    noisy, clean = batches(seed)
    state = method.init(jax.random.key(seed), noisy["image"][:1])
    meas = None
    for i in range(n_steps):
        noisy, clean = batches(seed + 100 + i)
        state, meas = step(state, noisy, clean)
    return method, step, state, meas


def assert_trees_close(a, b, atol=1e-6, rtol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("k,main_count,meta_count", [(10, 464_154, 44_042), (100, 470_004, 67_172)])
def test_parameter_counts_match_the_reference(k, main_count, meta_count):
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    main = jax.eval_shape(
        lambda: models.resnet32(k).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    meta = jax.eval_shape(
        lambda: models.MetaNet(k).init(
            {"params": jax.random.key(0), "dropout": jax.random.key(1)},
            jnp.zeros((2, 64)),
            jnp.zeros((2,), jnp.int32),
        )
    )
    assert count(main["params"]) == main_count
    assert count(meta["params"]) == meta_count


def test_resnet_shapes_and_untruncated_kaiming_init():
    model = models.resnet32(10)
    v = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False))()
    logits, feats = jax.jit(lambda x: model.apply(v, x, train=False))(jnp.ones((3, 8, 8, 1)))
    assert logits.shape == (3, 10) and feats.shape == (3, 64)
    kernel = np.asarray(v["params"]["stage2_block1"]["conv1"]["kernel"])  # 3x3x64x64
    std = np.sqrt(2.0 / (3 * 3 * 64))
    assert abs(kernel.std() / std - 1) < 0.02
    assert np.abs(kernel).max() > 3 * std  # a 2-sigma truncated normal never gets here


def test_meta_model_outputs_probabilities_and_stops_feature_gradients():
    meta = models.MetaNet(10)
    feats, labels = jnp.ones((5, 64)), jnp.arange(5)
    v = meta.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, feats, labels)
    p = meta.apply(v, feats, labels, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_allclose(np.asarray(p.sum(-1)), 1.0, rtol=1e-6)
    g = jax.grad(lambda f: meta.apply(v, f, labels, rngs={"dropout": jax.random.key(2)})[0, 0])(
        feats
    )
    assert not np.any(np.asarray(g))
    emb = np.asarray(v["params"]["label_embedding"]["embedding"])
    assert abs(emb.std() - 1) < 0.1  # N(0, 1), as PyTorch's nn.Embedding


# ---------------------------------------------------------------- registry and steps
def test_registry_rejects_unknown_names():
    with pytest.raises(ConfigError, match="method.name='nope'.*ebomlc"):
        methods.create("nope")
    main, meta = tiny_models()
    with pytest.raises(ConfigError, match="method.ebomlc.variant='paperr'.*reference"):
        methods.create(
            "ebomlc", main_model=main, meta_model=meta, lr_schedule=lambda s: 0.1, variant="paperr"
        )


@pytest.mark.parametrize(
    "name,kw",
    [
        ("ce", {}),
        ("ebomlc", {"keep_inner_step": True}),
        ("ebomlc", {"variant": "reference", "q_as_optimizer_delta": True}),
        ("mlc", {}),
        ("mlc_d", {"k": 2, "delta": 0.5}),
    ],
)
def test_jitted_steps_run_and_measure(name, kw):
    method, _ = build_and_jit(name, **kw)
    noisy, clean = batches()
    state = method.init(jax.random.key(0), noisy["image"][:1])
    before = jax.tree.map(np.asarray, {k: state[k] for k in ("main", "meta") if k in state})
    step = jax.jit(method.step, donate_argnums=0)  # the donating form research code uses
    for i in range(4):
        state, meas = step(state, *batches(i))
    assert int(state["step"]) == 4
    assert float(meas["lr"]) == pytest.approx(0.01)  # the schedule decays at step 3
    assert all(np.isfinite(float(v)) for v in meas.values())
    after = {k: state[k] for k in before}
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, after)
    assert all(jax.tree.leaves(changed["main"]["params"]))
    if name != "ce":
        assert {"G", "lr", "meta_lr", "meta_accuracy"} <= set(meas)
        assert any(jax.tree.leaves(changed["meta"]["params"]))
    if name in ("ebomlc", "mlc_d"):
        assert {"F", "Q", "beta", "grad_Q_norm", "grad_F_norm"} <= set(meas)


# The full-size ResNet-32 EBOMLC step on CIFAR-shaped batches is compiled and run by
# tests/test_readme.py (8 + 8 images, every measurement finite) and by
# tests/test_configs.py (cifar100_flip40: the paper's recipe, 100 + 100 images, mocked tfds).


# ---------------------------------------------------------------- steps by hand
def hand_setup(method, state, noisy, clean, num_keys, clean_in_g=True):
    """What every step starts from: lr, dropout keys, flat w / alpha and closures over them.

    With `clean_in_g` (the default) F sees the first half of the clean batch and G the noisy
    batch plus the second half; without it, F the whole clean batch and G the noisy one (Eq. 3).
    """
    _, key = jax.random.split(state["rng"])
    keys = [jax.random.fold_in(key, i) for i in range(num_keys)]
    lr = method.lr_schedule(state["step"])
    w, unravel_w = ravel_pytree(state["main"]["params"])
    a, unravel_a = ravel_pytree(state["meta"]["params"])
    stats = state["main"]["batch_stats"]

    def fwd(wv, images):
        (logits, h), _ = method.main_model.apply(
            {"params": unravel_w(wv), "batch_stats": stats}, images, train=True, mutable=True
        )
        return logits, h

    def meta(av, h, y, k):
        return method.meta_model.apply(
            {"params": unravel_a(av)}, jax.lax.stop_gradient(h), y, rngs={"dropout": k}
        )

    def ce(logits, y):
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

    half = clean["label"].shape[0] // 2 if clean_in_g else clean["label"].shape[0]
    up = {k: v[:half] for k, v in clean.items()}
    low = {k: v[half:] for k, v in clean.items()}

    def G(wv, av, k):  # noisy soft CE mixed with the clean half, 8:4 (or noisy only)
        logits, h = fwd(wv, noisy["image"])
        t = meta(av, h, noisy["label"], k)
        soft = -jnp.mean(jnp.sum(t * jax.nn.log_softmax(logits), -1))
        if not clean_in_g:
            return soft
        n, m = len(noisy["label"]), len(low["label"])
        return (n * soft + m * ce(fwd(wv, low["image"])[0], low["label"])) / (n + m)

    buf, _ = ravel_pytree(optax.tree_utils.tree_get(state["main_opt"], "trace"))
    return lr, keys, w, a, unravel_w, unravel_a, fwd, meta, ce, up, G, buf


def check_main(new_state, expected_w, expected_buf, unravel_w):
    assert_trees_close(new_state["main"]["params"], unravel_w(expected_w))
    buf = optax.tree_utils.tree_get(new_state["main_opt"], "trace")
    assert_trees_close(buf, unravel_w(expected_buf))


def check_meta(method, state, new_state, grad_meta, unravel_a):
    updates, _ = method.meta_tx.update(
        unravel_a(grad_meta), state["meta_opt"], state["meta"]["params"]
    )
    assert_trees_close(
        new_state["meta"]["params"], optax.apply_updates(state["meta"]["params"], updates)
    )


@pytest.mark.parametrize("branch", [False, True])
def test_reference_step_by_hand(branch):
    """docs/reference_notes.md section 4, items 1-8, written out on flat vectors."""
    method, step, state, _ = run_steps(  # two steps: a nonzero momentum buffer
        "ebomlc", 2, variant="reference", q_as_optimizer_delta=branch, xi=0.5, delta=2.0
    )
    noisy, clean = batches(7)
    lr, keys, w, a, unravel_w, unravel_a, fwd, meta, ce, up, G, buf = hand_setup(
        method, state, noisy, clean, 3
    )
    rho = method.rho

    def F(wv, av):  # logits mixed with probabilities (item 3)
        logits, h = fwd(wv, up["image"])
        return ce(rho * logits + (1 - rho) * meta(av, h, up["label"], keys[0]), up["label"])

    gf_w, gf_a = jax.grad(F, argnums=(0, 1))(w, a)
    u_f = -lr * (MU * buf + gf_w + WD * w)  # item 2
    g0_w, g0_a = jax.grad(G, argnums=(0, 1))(w, a, keys[1])
    w1 = w - lr * (MU * buf + g0_w + WD * w)  # item 7
    g1_w, g1_a = jax.grad(G, argnums=(0, 1))(w1, a, keys[2])  # item 8: third mask
    dq_w, dq_a = g0_w - g1_w, g0_a - g1_a
    sq = dq_w @ dq_w + dq_a @ dq_a
    lam = 0.5 * jax.nn.relu((2.0 * sq - dq_w @ u_f) / (sq + 1e-8))  # item 4
    if branch:
        dq_w = -lr * (MU * buf + dq_w + WD * w1)  # item 5
    grad_main = lam * dq_w + u_f
    new_buf = MU * buf + grad_main + WD * w1  # torch SGD step from w1 (item 1)
    new_w = w1 - lr * new_buf

    new_state, meas = step(state, noisy, clean)
    check_main(new_state, new_w, new_buf, unravel_w)
    check_meta(method, state, new_state, lam * dq_a + gf_a, unravel_a)
    np.testing.assert_allclose(float(meas["xi_beta"]), float(lam), rtol=1e-5)


@pytest.mark.parametrize(
    "keep,clean_in_g", [(True, True), (False, True), (True, False)], ids=["w1", "w", "eq3"]
)
def test_paper_step_by_hand(keep, clean_in_g):
    """Algorithm 2 with the mixture of probabilities; one dropout mask for both G calls. "eq3":
    clean_in_lower_loss=False, the literal Eq. 3 (G on the noisy batch only, F on all of D's)."""
    method, step, state, _ = run_steps(
        "ebomlc", 2, keep_inner_step=keep, clean_in_lower_loss=clean_in_g
    )
    noisy, clean = batches(8)
    lr, keys, w, a, unravel_w, unravel_a, fwd, meta, ce, up, G, buf = hand_setup(
        method, state, noisy, clean, 2, clean_in_g
    )

    def F(wv, av):
        logits, h = fwd(wv, up["image"])
        p = 0.2 * jax.nn.softmax(logits) + 0.8 * meta(av, h, up["label"], keys[0])
        return -jnp.mean(jnp.log(p[jnp.arange(len(up["label"])), up["label"]]))

    gf_w, gf_a = jax.grad(F, argnums=(0, 1))(w, a)
    g0_w, g0_a = jax.grad(G, argnums=(0, 1))(w, a, keys[1])
    w1 = w - lr * g0_w
    g1_w, g1_a = jax.grad(G, argnums=(0, 1))(w1, a, keys[1])
    dq_w, dq_a = g0_w - g1_w, g0_a - g1_a
    beta = jnp.maximum(0.25 - gf_w @ dq_w / (dq_w @ dq_w + dq_a @ dq_a), 0.0)
    d_w, d_a = gf_w + 0.5 * beta * dq_w, gf_a + 0.5 * beta * dq_a
    new_buf = MU * buf + d_w + WD * w
    new_w = (w1 if keep else w) - lr * new_buf

    new_state, meas = step(state, noisy, clean)
    check_main(new_state, new_w, new_buf, unravel_w)
    check_meta(method, state, new_state, d_a, unravel_a)
    np.testing.assert_allclose(float(meas["beta"]), float(beta), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(meas["G"]), float(G(w, a, keys[1])), rtol=1e-5)
    np.testing.assert_allclose(float(meas["F"]), float(F(w, a)), rtol=1e-5)


def test_keep_inner_step_differs_exactly_by_the_inner_step():
    on, step_on, state, _ = run_steps("ebomlc", 2, keep_inner_step=True)
    _, step_off = build_and_jit("ebomlc", keep_inner_step=False)
    noisy, clean = batches(9)
    lr, keys, w, a, *_, G, _ = hand_setup(on, state, noisy, clean, 2)
    inner = -lr * jax.grad(G)(w, a, keys[1])
    s_on, _ = step_on(state, noisy, clean)
    s_off, _ = step_off(state, noisy, clean)
    diff = ravel_pytree(s_on["main"]["params"])[0] - ravel_pytree(s_off["main"]["params"])[0]
    np.testing.assert_allclose(np.asarray(diff), np.asarray(inner), atol=2e-7)
    assert np.abs(np.asarray(inner)).max() > 1e-3
    for part in ("meta", "main_opt", "meta_opt"):  # equal up to the two programs' rounding
        assert_trees_close(s_on[part], s_off[part], atol=1e-8, rtol=1e-6)


def test_mlc_step_by_hand_with_a_double_backward():
    """The JVP hypergradient equals PyTorch's double backward through the optimiser lookahead."""
    method, step, state, _ = run_steps("mlc", 2)
    noisy, clean = batches(10)
    lr, keys, w, a, unravel_w, unravel_a, fwd, meta, ce, up, G, buf = hand_setup(
        method, state, noisy, clean, 1
    )
    v = jax.grad(G)(w, a, keys[0])
    w_prime = w - lr * (MU * buf + v + WD * w)
    g_prime = jax.grad(lambda wv: ce(fwd(wv, up["image"])[0], up["label"]))(w_prime)
    # MLC's proxy: -<grad_w G(w, alpha), eta g'>, differentiated in alpha by reverse over reverse.
    d_meta = jax.grad(lambda av: -lr * jax.grad(G)(w, av, keys[0]) @ g_prime)(a)
    new_buf = MU * buf + v + WD * w
    new_state, _ = step(state, noisy, clean)
    check_main(new_state, w - lr * new_buf, new_buf, unravel_w)
    check_meta(method, state, new_state, d_meta, unravel_a)


def test_mlcd_step_by_hand():
    method, step, state, _ = run_steps("mlc_d", 2, k=2, delta=0.5)
    noisy, clean = batches(11)
    lr, keys, w, a, unravel_w, unravel_a, fwd, meta, ce, up, G, buf = hand_setup(
        method, state, noisy, clean, 1
    )
    wk = w
    for _ in range(2):
        wk = wk - lr * jax.grad(G)(wk, a, keys[0])
    g0_w, g0_a = jax.grad(G, argnums=(0, 1))(w, a, keys[0])
    gk_w, gk_a = jax.grad(G, argnums=(0, 1))(wk, a, keys[0])
    dq_w, dq_a = g0_w - gk_w, g0_a - gk_a
    gf_w = jax.grad(lambda wv: ce(fwd(wv, up["image"])[0], up["label"]))(w)
    sq = dq_w @ dq_w + dq_a @ dq_a
    beta = jnp.maximum((0.5 * sq - gf_w @ dq_w) / sq, 0.0)
    new_buf = MU * buf + gf_w + beta * dq_w + WD * w
    new_state, _ = step(state, noisy, clean)
    check_main(new_state, w - lr * new_buf, new_buf, unravel_w)
    check_meta(method, state, new_state, beta * dq_a, unravel_a)


def test_batch_stats_come_from_the_noisy_pass_at_w():
    method, step, state, _ = run_steps("ebomlc", 2, keep_inner_step=True)
    noisy, clean = batches(12)
    _, updates = method.main_model.apply(
        {"params": state["main"]["params"], "batch_stats": state["main"]["batch_stats"]},
        noisy["image"],
        train=True,
        mutable=["batch_stats"],
    )
    new_state, _ = step(state, noisy, clean)
    assert_trees_close(new_state["main"]["batch_stats"], updates["batch_stats"])


# ---------------------------------------------------------------- G's two batches in one pass
def test_segmented_batchnorm_equals_one_pass_per_batch_in_float64():
    """segments=(n, m): each batch normalised with its own statistics; running averages from
    the first; init, eval mode and one segment are plain flax BatchNorm."""
    with jax.enable_x64(True):
        model = models.CifarResNet(K, blocks_per_stage=1, widths=(4, 8), dtype=jnp.float64)
        v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
        v = jax.tree.map(lambda a: a.astype(jnp.float64), v)
        a = jax.random.normal(jax.random.key(1), (6, 8, 8, 3), jnp.float64)
        b = 3 * jax.random.normal(jax.random.key(2), (4, 8, 8, 3), jnp.float64) + 1

        def run(x, **kw):
            return model.apply(v, x, train=True, mutable=["batch_stats"], **kw)

        (la, fa), ua = run(a)
        (lb, fb), _ = run(b)
        (logits, f), u = run(jnp.concatenate([a, b]), segments=(6, 4))
        np.testing.assert_allclose(logits, jnp.concatenate([la, lb]), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f, jnp.concatenate([fa, fb]), rtol=1e-12, atol=1e-12)
        assert_trees_close(u, ua, atol=1e-12, rtol=1e-12)
        # Not one pass over the concatenation: its statistics mix the batches.
        (l_mixed, _), _ = run(jnp.concatenate([a, b]))
        assert np.abs(l_mixed - logits).max() > 1e-3
        (l1, _), u1 = run(a, segments=(6,))
        np.testing.assert_array_equal(l1, la)
        with pytest.raises(ValueError, match=r"segments \(6, 3\) do not sum to the batch size 10"):
            run(jnp.concatenate([a, b]), segments=(6, 3))


@pytest.mark.parametrize(
    "name,kw",
    [("ebomlc", {"keep_inner_step": True}), ("mlc", {})],  # mlc: forward mode through it too
)
def test_joint_lower_pass_equals_two_passes(name, kw):
    """method.joint_lower_pass changes how G is computed, not what: states agree to rounding."""
    _, _, separate, meas_sep = run_steps(name, 2, **kw)
    _, _, joint, meas_joint = run_steps(name, 2, joint_lower_pass=True, **kw)
    assert_trees_close(
        {k: v for k, v in joint.items() if k != "rng"},
        {k: v for k, v in separate.items() if k != "rng"},
        atol=1e-5,
        rtol=1e-4,
    )
    assert_trees_close(meas_joint, meas_sep, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["ebomlc", "mlc", "mlc_d"])
def test_joint_lower_pass_needs_a_clean_half_in_g(name):
    """Nothing to join: an error, not a flag that silently does nothing."""
    main, meta = tiny_models()
    with pytest.raises(
        ConfigError,
        match=rf"method\.{name}\.joint_lower_pass=True is not allowed with "
        rf"method\.{name}\.clean_in_lower_loss=False",
    ):
        methods.create(
            name,
            main_model=main,
            meta_model=meta,
            lr_schedule=lambda s: 0.1,
            joint_lower_pass=True,
            clean_in_lower_loss=False,
        )


def test_joint_lower_pass_needs_a_model_that_takes_segments():
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            return nn.Dense(K)(x.reshape(x.shape[0], -1)), x.reshape(x.shape[0], -1)

    with pytest.raises(ConfigError, match="joint_lower_pass=True.*Plain.*Allowed: False"):
        methods.create(
            "ebomlc",
            main_model=Plain(),
            meta_model=tiny_models()[1],
            lr_schedule=lambda s: 0.1,
            joint_lower_pass=True,
        )


def test_split_clean_batch_halves_every_entry():
    batch = {"image": np.arange(100 * 2).reshape(100, 2), "label": np.arange(100)}
    upper, lower = common.split_clean_batch(jax.tree.map(jnp.asarray, batch))
    np.testing.assert_array_equal(upper["label"], np.arange(50))
    np.testing.assert_array_equal(lower["label"], np.arange(50, 100))
    assert isinstance(lower["image"], jax.Array) and lower["image"].shape == (50, 2)
    with pytest.raises(ValueError, match="equal division"):  # validate refuses odd sizes first
        common.split_clean_batch({"image": jnp.zeros((7, 2)), "label": jnp.zeros(7)})


@pytest.mark.parametrize("train_on", ["both", "noisy", "clean"])
def test_ce_step_by_hand(train_on):
    """Eq. 2 in one training-mode pass over the batches of `train_on`, then PyTorch's SGD."""
    method, step, state, _ = run_steps("ce", 2, train_on=train_on)
    noisy, clean = batches(13)
    parts = {"both": [noisy, clean], "noisy": [noisy], "clean": [clean]}[train_on]
    images = jnp.concatenate([p["image"] for p in parts])
    labels = jnp.concatenate([p["label"] for p in parts])
    w, unravel_w = ravel_pytree(state["main"]["params"])
    stats = state["main"]["batch_stats"]

    def loss(wv):
        (logits, _), _ = method.main_model.apply(
            {"params": unravel_w(wv), "batch_stats": stats}, images, train=True, mutable=True
        )
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])

    lr = method.lr_schedule(state["step"])
    buf, _ = ravel_pytree(optax.tree_utils.tree_get(state["main_opt"], "trace"))
    new_buf = MU * buf + jax.grad(loss)(w) + WD * w
    new_state, meas = step(state, noisy, clean)
    check_main(new_state, w - lr * new_buf, new_buf, unravel_w)
    np.testing.assert_allclose(float(meas["loss"]), float(loss(w)), rtol=1e-5)
