"""Config options, each taken through the config path it is read from and checked on a value
that would differ if it were ignored."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny

from ebomlc_jax import methods, train
from ebomlc_jax.data import device as dd
from ebomlc_jax.data import normalize


def built(config):
    """(data, spec, method, fresh state) of a config."""
    data = train.load_data(config, config.seed)
    spec = train.batch_spec(config, data)
    method = train.build_method(
        config, data.num_classes, spec.steps_per_epoch, None, data.num_noisy
    )
    sample = normalize(data.images[:1], data.mean, data.std)
    return data, spec, method, method.init(jax.random.key(0), sample)


def first_batches(data, spec):
    put = dd.place_data([data], [0])
    rows = dd.noisy_epoch_rows(put.keys, 0, spec)[0]
    return dd.train_batches(put.shared, put.per_seed, put.keys, 0, rows, spec), put, rows


def test_bfloat16_main_model_computes_in_bfloat16_and_trains():
    config = tiny({"model.dtype": "bfloat16"})
    data, spec, method, state = built(config)
    assert method.main_model.dtype == jnp.bfloat16
    (noisy, clean), _, _ = first_batches(data, spec)
    f32 = method.main_model.clone(dtype=jnp.float32)
    low = method.main_model.apply(state["main"], noisy["image"], train=False)[0]
    high = f32.apply(state["main"], noisy["image"], train=False)[0]
    difference = float(jnp.max(jnp.abs(low - high)) / jnp.max(jnp.abs(high)))
    assert 1e-4 < difference < 0.05, difference  # bfloat16 rounding, not another model
    new, meas = jax.jit(method.step)(state, noisy, clean)
    assert all(np.isfinite(float(v)) for v in meas.values())
    for leaf in jax.tree.leaves(new["main"]["params"]):
        assert leaf.dtype == jnp.float32  # parameters stay float32; only the compute is bf16


@pytest.mark.parametrize("augment", [False, True])
def test_augment_switch_decides_whether_batches_are_exactly_the_normalised_images(augment):
    config = tiny({"data.augment": augment})
    data, spec, _, _ = built(config)
    assert spec.augment is augment
    (noisy, clean), put, rows = first_batches(data, spec)
    raw = data.images[data.noisy_index[np.asarray(rows)]]
    plain = normalize(raw, data.mean, data.std)
    difference = np.max(np.abs(np.asarray(noisy["image"]) - plain))
    assert (difference < 1e-5) is not augment, difference  # float32 rounding vs moved pixels


def test_meta_model_without_batch_norm_has_no_bn_and_trains():
    config = tiny({"model.meta_batch_norm": False})
    data, spec, method, state = built(config)
    assert "bn" not in state["meta"]["params"]
    assert "bn" in built(tiny())[3]["meta"]["params"]
    (noisy, clean), _, _ = first_batches(data, spec)
    new, meas = jax.jit(method.step)(state, noisy, clean)
    assert np.isfinite(float(meas["G"]))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state["meta"], new["meta"])
    assert all(jax.tree.leaves(moved))


def test_uniform_noise_to_another_class_through_the_config():
    """The paper's text: realised rate = nominal (0.6); the released draw: 0.6 x 9/10."""
    other = train.load_data(tiny({"noise.uniform_includes_true_class": False}), 0)
    released = train.load_data(tiny(), 0)
    assert other.noise["realised_rate"] == pytest.approx(0.6, abs=0.03)
    assert released.noise["realised_rate"] == pytest.approx(0.54, abs=0.03)
    assert other.noise["includes_true_class"] is False


@pytest.mark.parametrize(
    "dataset,expected", [("cifar10", False), ("cifar100", True), ("digits", True)]
)
def test_released_cifar100_branch_defaults_on_for_every_dataset_but_cifar10(dataset, expected):
    config = tiny({"data.dataset": dataset})
    assert methods.get("ebomlc").hyperparameters(config)["q_as_optimizer_delta"] is expected
    config.method.ebomlc.q_as_optimizer_delta = not expected  # an explicit value wins
    assert methods.get("ebomlc").hyperparameters(config)["q_as_optimizer_delta"] is not expected
    method = train.build_method(tiny({"data.dataset": dataset}), 10, 3)
    assert method.q_as_optimizer_delta is expected


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_config_block_defaults_are_the_methods_own(name):
    """A method's config block and its constructor's defaults agree (research code and runs
    start from the same hyperparameters)."""
    cls = methods.get(name)
    hp = cls.hyperparameters(tiny({"data.dataset": "cifar10"}))
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.name not in {g.name for g in dataclasses.fields(methods.Method)}
    }
    assert hp == defaults


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_an_eager_init_can_be_donated_to_the_jitted_step(name):
    """`state = method.init(...)` outside jit, then `jax.jit(method.step, donate_argnums=0)` (the
    README's research-code use): no buffer may appear twice in the state, or donation fails."""
    config = tiny({"method.name": name})
    data = train.load_data(config, config.seed)
    spec = train.batch_spec(config, data)
    method = train.build_method(
        config, data.num_classes, spec.steps_per_epoch, None, data.num_noisy
    )
    state = method.init(jax.random.key(0), normalize(data.images[:1], data.mean, data.std))
    arrays = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
    pointers = [x.unsafe_buffer_pointer() for x in arrays if x.size]
    assert len(pointers) == len(set(pointers))
