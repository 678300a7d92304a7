"""Co-teaching+: the forget-rate schedule, the small-loss selection among disagreements (and among
all examples in the warm-up), the swap between the two networks, their own optimiser states,
the no-disagreement rule, pmap, and the config. The steps run on a lookup-table "network"
whose logits are its parameters (one row per example), so the rows a step changes are the
examples the network was trained on."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import case_ids, check_bad_input, tiny

from ebomlc_jax import train
from ebomlc_jax.errors import ConfigError
from ebomlc_jax.methods import common
from ebomlc_jax.methods.coteaching_plus import (
    CoteachingPlus,
    forget_rates,
    remember_counts,
)

N, M, K = 12, 4, 3  # noisy examples, clean examples, classes
LR = 0.5
TAU = 0.5


class Lookup(nn.Module):
    """Logits read from a parameter table by the example's id (the image's one pixel)."""

    rows: int
    axis_name: str | None = None  # the method's axis (no collective here)

    @nn.compact
    def __call__(self, x, train=False):
        table = self.param("table", nn.initializers.normal(1.0), (self.rows, K))
        self.variable("batch_stats", "unused", jnp.zeros, ())
        logits = table[x[:, 0, 0, 0].astype(jnp.int32)]
        return logits, logits


def make(axis_name=None, **hp):
    hp = {"forget_rate": TAU, "num_gradual": 10, "init_epoch": 0, "steps_per_epoch": 1} | hp
    return CoteachingPlus(
        main_model=Lookup(N + M, axis_name),
        lr_schedule=optax.constant_schedule(LR),
        weight_decay=0.0,
        axis_name=axis_name,
        **hp,
    )


def ids(rows):
    return jnp.asarray(rows, jnp.float32)[:, None, None, None]


RNG = np.random.RandomState(3)
TABLES = 2.0 * RNG.normal(size=(2, N + M, K)).astype(np.float32)
LABELS = RNG.randint(0, K, size=N + M)
TRUE = np.where(np.arange(N) % 3 == 0, (LABELS[:N] + 1) % K, LABELS[:N])  # every third wrong
NOISY = {"image": ids(range(N)), "label": jnp.asarray(LABELS[:N]), "index": jnp.arange(N)}
CLEAN = {"image": ids(range(N, N + M)), "label": jnp.asarray(LABELS[N:])}


def start(method, tables=TABLES, step=0):
    state = method.init(jax.random.key(0), NOISY["image"][:1])
    for name, table in zip(("main", "peer"), tables, strict=True):
        state[name] = {**state[name], "params": {"table": jnp.asarray(table)}}
    return {**state, "step": jnp.asarray(step, jnp.int32)}


def one_step(method, tables=TABLES, step=0, noisy=NOISY):
    state = start(method, tables, step)
    new, meas = jax.jit(method.step)(state, noisy, CLEAN)
    return state, new, meas


def log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def ce(table):
    """Each noisy example's CE under a network's table."""
    return -log_softmax(np.asarray(table, np.float64)[:N])[np.arange(N), LABELS[:N]]


def smallest(loss, candidates, count):
    return set(np.argsort(np.where(candidates, loss, np.inf), kind="stable")[:count].tolist())


def trained_rows(old, new, name):
    """Noisy examples whose row of network `name` the step changed."""
    moved = np.any(np.asarray(new[name]["params"]["table"] != old[name]["params"]["table"]), 1)
    assert moved[N:].all()  # the clean batch, every step
    return set(np.flatnonzero(moved[:N]).tolist())


DISAGREE = np.argmax(TABLES[0, :N], 1) != np.argmax(TABLES[1, :N], 1)


def test_the_injected_networks_disagree_on_part_of_the_batch():
    assert 4 <= DISAGREE.sum() < N


def test_schedule_is_the_codes_linear_ramp_then_tau():
    rates = forget_rates(TAU, 10)
    assert rates[0] == 0 and rates[1] == pytest.approx(TAU / 9) and rates[9] == TAU
    assert rates[10] == TAU and len(rates) == 11
    np.testing.assert_array_equal(forget_rates(0.2, 0), [0.2])
    counts = remember_counts(0.45, 10, 100)
    assert counts.shape == (11, 101) and counts[10, 100] == 55 and counts[0, 37] == 37
    assert counts[1, 100] == int((1 - 0.45 / 9) * 100) == 95
    # int((1 - 0.3) * 10) is 7 in float64 (the code); float32 arithmetic would give 6
    assert remember_counts(0.3, 1, 10)[1, 10] == 7


@pytest.mark.parametrize("step", [0, 4, 9, 30])
def test_each_network_trains_on_its_peers_scheduled_small_loss_disagreements(step):
    """steps_per_epoch = 1: step s is the code's epoch s + 1, forget rate tau min((s+1)/9, 1)."""
    method = make()
    old, new, meas = one_step(method, step=step)
    d = int(DISAGREE.sum())
    forget = TAU * min((step + 1) / 9, 1)
    count = int((1 - forget) * d) or d
    loss1, loss2 = ce(TABLES[0]), ce(TABLES[1])
    picked1, picked2 = smallest(loss1, DISAGREE, count), smallest(loss2, DISAGREE, count)
    if step == 30:
        assert picked1 != picked2  # so the swap below is visible
    assert trained_rows(old, new, "main") == picked2  # network 1 learns from network 2's pick
    assert trained_rows(old, new, "peer") == picked1
    assert float(meas["selected"]) == count and float(meas["disagreements"]) == d
    assert float(meas["forget_rate"]) == pytest.approx(forget)
    assert float(meas["kept_fraction"]) == pytest.approx(count / d)
    assert float(meas["warmup"]) == 0


def test_the_update_averages_the_mean_ce_of_the_peers_pick_and_the_clean_mean_ce():
    method = make()
    old, new, meas = one_step(method, step=30)
    count = int(TAU * DISAGREE.sum()) or int(DISAGREE.sum())
    for name, own, teacher in (("main", 0, 1), ("peer", 1, 0)):
        z = TABLES[own]
        p = np.exp(log_softmax(z))
        residual = p - np.eye(K)[LABELS]
        chosen = sorted(smallest(ce(TABLES[teacher]), DISAGREE, count))
        grad = np.zeros_like(z)
        grad[chosen] = residual[chosen] / count / 2
        grad[N:] = residual[N:] / M / 2
        table = np.asarray(new[name]["params"]["table"])
        np.testing.assert_allclose(table, z - LR * grad, rtol=1e-5, atol=1e-6)
        # Its own optimiser state: the momentum buffer holds its own gradient, not its peer's.
        trace = common.momentum_buffer(new[f"{name}_opt"])["table"]
        np.testing.assert_allclose(np.asarray(trace), grad, rtol=1e-5, atol=1e-6)
        clean = np.mean([-np.log(p[i, LABELS[i]]) for i in range(N, N + M)])
        loss = (ce(z)[chosen].mean() + clean) / 2
        key = "loss" if name == "main" else "loss_net2"
        assert float(meas[key]) == pytest.approx(loss, rel=1e-5)
    assert int(new["step"]) == int(old["step"]) + 1


def test_second_step_moves_each_network_with_its_own_momentum():
    method = make()
    _, first, _ = one_step(method, step=30)
    second, _ = jax.jit(method.step)(first, NOISY, CLEAN)
    tables = [first[n]["params"]["table"] for n in ("main", "peer")]
    _, again, _ = one_step(method, tables=tables, step=31)  # same gradient, zero momentum
    for name in ("main", "peer"):
        fresh = again[name]["params"]["table"] - first[name]["params"]["table"]  # -lr g, no b
        buffer = common.momentum_buffer(first[f"{name}_opt"])["table"]
        moved = second[name]["params"]["table"] - first[name]["params"]["table"]
        np.testing.assert_allclose(moved, fresh - LR * 0.9 * buffer, rtol=1e-4, atol=1e-5)


def test_warmup_selects_among_all_examples():
    method = make(init_epoch=11)  # code epochs 1..10 are plain Co-teaching
    old, new, meas = one_step(method, step=9)  # code epoch 10: forget rate tau
    count = int((1 - TAU) * N)
    picked1 = smallest(ce(TABLES[0]), np.ones(N, bool), count)
    picked2 = smallest(ce(TABLES[1]), np.ones(N, bool), count)
    assert not picked1 <= set(np.flatnonzero(DISAGREE))  # agreeing examples are picked too
    assert trained_rows(old, new, "main") == picked2
    assert trained_rows(old, new, "peer") == picked1
    assert float(meas["warmup"]) == 1 and float(meas["selected"]) == count
    _, _, after = one_step(method, step=10)
    assert float(after["warmup"]) == 0 and float(after["selected"]) < count


@pytest.mark.parametrize("step,trains", [(4999, True), (5000, False)])
def test_without_disagreement_the_whole_batch_trains_until_the_codes_step_5000(step, trains):
    """loss_coteaching_plus: no disagreement -> the batch's CE while epoch * i < 5000, else 0;
    here epoch 1 (steps_per_epoch 10000) and i = step."""
    method = make(steps_per_epoch=10_000)
    same = [TABLES[0], TABLES[0]]
    old, new, meas = one_step(method, tables=same, step=step)
    expected = set(range(N)) if trains else set()
    assert trained_rows(old, new, "main") == trained_rows(old, new, "peer") == expected
    assert float(meas["disagreements"]) == 0 and float(meas["selected"]) == len(expected)


def test_a_zero_count_keeps_every_disagreement():
    """loss_coteaching: int(remember_rate * n) == 0 -> all n candidates."""
    method = make(forget_rate=1.0)
    old, new, meas = one_step(method, step=30)
    assert trained_rows(old, new, "main") == set(np.flatnonzero(DISAGREE).tolist())
    assert float(meas["selected"]) == DISAGREE.sum()


def test_mislabelled_share_of_each_selection_from_the_true_labels():
    method = make()
    noisy = {**NOISY, "true_label": jnp.asarray(TRUE)}
    old, new, meas = one_step(method, step=30, noisy=noisy)
    wrong = LABELS[:N] != TRUE
    count = int(TAU * DISAGREE.sum())
    for name, own in (("net1", 0), ("net2", 1)):
        picked = sorted(smallest(ce(TABLES[own]), DISAGREE, count))
        share = wrong[picked].mean()
        assert float(meas[f"mislabelled_in_selection_{name}"]) == pytest.approx(share)
    _, same, _ = one_step(method, step=30)  # true labels change nothing in training
    for name in ("main", "peer"):
        np.testing.assert_array_equal(new[name]["params"]["table"], same[name]["params"]["table"])


def test_four_devices_under_pmap_select_over_the_global_batch():
    """Each device holds 3 noisy examples; the selection is the one-device selection."""
    _, single, meas = one_step(make(), step=30)
    method = make(axis_name="data")
    state = start(method, step=30)
    shard = functools.partial(jax.tree.map, lambda x: x.reshape(4, -1, *x.shape[1:]))
    replicate = functools.partial(jax.tree.map, lambda x: jnp.stack([x] * 4))
    step = jax.pmap(method.step, axis_name="data", in_axes=(0, 0, 0))
    states, pmeas = step(replicate(state), shard(NOISY), shard(CLEAN))
    for name in ("main", "peer"):
        for device in range(4):
            np.testing.assert_allclose(
                states[name]["params"]["table"][device],
                single[name]["params"]["table"],
                rtol=1e-5,
                atol=1e-6,
            )
    for key in ("loss", "loss_net2", "selected", "disagreements"):
        assert float(pmeas[key][0]) == pytest.approx(float(meas[key]), rel=1e-5), key


def test_two_networks_from_different_initialisations_and_both_evaluated():
    method = make()
    state = method.init(jax.random.key(0), NOISY["image"][:1])
    assert not np.allclose(state["main"]["params"]["table"], state["peer"]["params"]["table"])
    state = start(method)
    np.testing.assert_array_equal(method.predict(state, NOISY["image"]), TABLES[0][:N])
    extra = method.extra_predictions(state, NOISY["image"])
    assert list(extra) == ["net2"]
    np.testing.assert_array_equal(extra["net2"], TABLES[1][:N])


def test_forget_rate_defaults_to_the_noise_rate_and_init_epoch_to_the_datasets():
    method = train.build_method(tiny({"method.name": "coteaching_plus"}), 10, 3)
    assert method.forget_rate == 0.6 and method.init_epoch == 0  # tiny: digits, 60% noise
    for dataset, epoch in (("cifar10", 20), ("cifar100", 5)):
        config = tiny({"method.name": "coteaching_plus", "data.dataset": dataset})
        assert train.build_method(config, 10, 3).init_epoch == epoch
    config = tiny(
        {
            "method.name": "coteaching_plus",
            "noise.kind": "pair",
            "noise.rate": 0.45,
            "method.coteaching_plus.init_epoch": 3,
        }
    )
    method = train.build_method(config, 10, 3)
    assert method.forget_rate == 0.45 and method.init_epoch == 3
    config.method.coteaching_plus.forget_rate = 0.3
    assert train.build_method(config, 10, 3).forget_rate == 0.3


def test_direct_construction_needs_a_forget_rate_and_epochs():
    with pytest.raises(ConfigError, match="forget_rate=None means the run's noise.rate"):
        make(forget_rate=None).tau  # noqa: B018
    with pytest.raises(ConfigError, match="needs steps_per_epoch >= 1"):
        make(steps_per_epoch=0)


F = "method.coteaching_plus."
BAD_INPUT = [
    ({"method.name": "coteaching_plus", F + "forget_rate": 1.5}, r"forget_rate=1\.5 is not allo"),
    ({"method.name": "coteaching_plus", F + "forget_rate": -0.1}, r"forget_rate=-0\.1 is not al"),
    ({"method.name": "coteaching_plus", F + "num_gradual": -1}, r"num_gradual=-1 is not allowed"),
    ({"method.name": "coteaching_plus", F + "init_epoch": -2}, r"init_epoch=-2 is not allowed"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUT, ids=case_ids(BAD_INPUT))
def test_bad_input_is_refused_before_any_compute(overrides, message, tmp_path, monkeypatch):
    check_bad_input(overrides, message, tmp_path, monkeypatch)
