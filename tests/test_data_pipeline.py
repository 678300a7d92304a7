"""build_data and the batch order shared by host streams, tf.data and on-device epochs."""

import functools
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebomlc_jax import data as D
from ebomlc_jax.errors import ConfigError

BS, CLEAN_BS = 64, 20


@pytest.fixture(scope="module")
def digits():
    return D.build_data("digits", seed=0, noise_kind="uniform", noise_rate=0.4, clean_fraction=0.05)


def _batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_build_data_digits(digits):
    src = D.load_source("digits")
    n = len(src.train_labels)
    assert digits.num_clean == 10 * round(0.05 * n / 10)
    assert digits.num_clean + digits.num_noisy == n
    np.testing.assert_array_equal(np.bincount(digits.clean_label), digits.num_clean // 10)
    # Clean labels are true labels; D' keeps its true labels beside the noisy ones.
    np.testing.assert_array_equal(digits.clean_label, src.train_labels[digits.clean_index])
    np.testing.assert_array_equal(digits.noisy_true_label, src.train_labels[digits.noisy_index])
    realised = np.mean(digits.noisy_label != digits.noisy_true_label)
    assert digits.noise["realised_rate"] == pytest.approx(realised)
    assert abs(realised - 0.4 * 9 / 10) < 0.05
    assert digits.noise["kind"] == "uniform" and digits.noise["nominal_rate"] == 0.4
    json.dumps(digits.noise)
    for a in (digits.clean_label, digits.noisy_label, digits.noisy_true_label, digits.test_labels):
        assert a.dtype == np.int32
    assert digits.images.dtype == np.uint8 and digits.test_images.dtype == np.uint8


def test_build_data_seeds(digits):
    kwargs = dict(noise_kind="uniform", noise_rate=0.4, clean_fraction=0.05)
    same = D.build_data("digits", seed=0, **kwargs)
    other = D.build_data("digits", seed=1, **kwargs)
    for field in ("clean_index", "noisy_index", "noisy_label"):
        np.testing.assert_array_equal(getattr(same, field), getattr(digits, field))
    assert not np.array_equal(other.clean_index, digits.clean_index)
    clean = D.build_data("digits", seed=0, noise_kind="flip", noise_rate=0.0, clean_fraction=0.05)
    np.testing.assert_array_equal(clean.noisy_label, clean.noisy_true_label)


def test_build_data_through_mocked_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=400):
        data = D.build_data(
            "cifar10", seed=0, noise_kind="flip", noise_rate=0.4, clean_fraction=0.05
        )
    assert data.num_clean == 20 and data.num_noisy == 380
    assert data.images.shape == (400, 32, 32, 3) and data.test_images.shape == (400, 32, 32, 3)
    changed = data.noisy_label != data.noisy_true_label
    np.testing.assert_array_equal(
        data.noisy_label[changed], D.flip_map(10)[data.noisy_true_label[changed]]
    )
    batch = next(D.noisy_stream(data, jax.random.key(0), 32))
    assert batch["image"].shape == (32, 32, 32, 3) and batch["image"].dtype == np.uint8


def test_epoch_batches_is_a_permutation_and_jits():
    key = jax.random.key(0)
    rows = D.epoch_batches(key, 3, 103, 10)
    assert rows.shape == (10, 10) and rows.dtype == jnp.int32
    assert len(np.unique(rows)) == 100 and rows.max() < 103
    assert not np.array_equal(rows, D.epoch_batches(key, 4, 103, 10))
    traced = jax.jit(D.epoch_batches, static_argnums=(2, 3))(key, jnp.int32(3), 103, 10)
    np.testing.assert_array_equal(rows, traced)


def test_stream_batch_agrees_with_epoch_batches():
    key = jax.random.key(1)
    n, bs = 55, 10  # 5 steps per pass, 5 examples dropped each pass.
    step_fn = jax.jit(D.stream_batch, static_argnums=(2, 3))
    for step in range(17):
        epoch, pos = divmod(step, n // bs)
        expected = D.epoch_batches(key, epoch, n, bs)[pos]
        np.testing.assert_array_equal(D.stream_batch(key, step, n, bs), expected)
        np.testing.assert_array_equal(step_fn(key, jnp.int32(step), n, bs), expected)


@pytest.mark.parametrize("which, bs", [("noisy", BS), ("clean", CLEAN_BS)])
def test_host_stream_matches_index_functions(digits, which, bs):
    key = jax.random.key(2)
    stream = D.noisy_stream if which == "noisy" else D.clean_stream
    n = digits.num_noisy if which == "noisy" else digits.num_clean
    steps = 2 * (n // bs) + 3  # Crosses two reshuffles.
    for step, batch in enumerate(itertools.islice(stream(digits, key, bs), steps)):
        idx = D.stream_batch(key, step, n, bs)
        _batches_equal(batch, D.gather_batch(digits, which, idx))
    assert set(batch) == (
        {"image", "label", "true_label", "index"} if which == "noisy" else {"image", "label"}
    )


@pytest.mark.parametrize("which, bs", [("noisy", BS), ("clean", CLEAN_BS)])
def test_start_step_resumes_in_place(digits, which, bs):
    key = jax.random.key(3)
    stream = D.noisy_stream if which == "noisy" else D.clean_stream
    full = list(itertools.islice(stream(digits, key, bs), 40))
    for start in (0, 7, 21, 33):
        resumed = list(itertools.islice(stream(digits, key, bs, start_step=start), 40 - start))
        for a, b in zip(full[start:], resumed, strict=True):
            _batches_equal(a, b)


@pytest.mark.parametrize("which, bs", [("noisy", BS), ("clean", CLEAN_BS)])
def test_tf_dataset_matches_host_stream(digits, which, bs):
    pytest.importorskip("tensorflow")
    key = jax.random.key(4)
    stream = D.noisy_stream if which == "noisy" else D.clean_stream
    start, steps = 5, 30
    ds = D.tf_dataset(digits, key, bs, which, start_step=start, num_steps=steps)
    host = itertools.islice(stream(digits, key, bs, start_step=start), steps)
    got = list(ds.as_numpy_iterator())
    assert len(got) == steps
    for a, b in zip(got, host, strict=True):
        _batches_equal(a, b)
    # Iterating again starts over rather than continuing a shared iterator.
    _batches_equal(next(ds.as_numpy_iterator()), got[0])


def test_on_device_scan_epoch_matches_host_stream(digits):
    key = jax.random.key(5)
    images = jnp.asarray(digits.images[digits.noisy_index])
    labels = jnp.asarray(digits.noisy_label)
    steps = digits.num_noisy // BS

    @functools.partial(jax.jit, static_argnums=1)
    def epoch_images(epoch, n):
        def body(carry, idx):
            return carry, (images[idx], labels[idx])

        return jax.lax.scan(body, 0, D.epoch_batches(key, epoch, n, BS))[1]

    device_images, device_labels = epoch_images(jnp.int32(1), digits.num_noisy)
    host = itertools.islice(D.noisy_stream(digits, key, BS, start_step=steps), steps)
    for i, batch in enumerate(host):
        np.testing.assert_array_equal(device_images[i], batch["image"])
        np.testing.assert_array_equal(device_labels[i], batch["label"])


def test_gather_batch_uses_set_positions(digits):
    idx = np.array([0, 5, 2])
    noisy = D.gather_batch(digits, "noisy", idx)
    np.testing.assert_array_equal(noisy["image"], digits.images[digits.noisy_index[idx]])
    np.testing.assert_array_equal(noisy["label"], digits.noisy_label[idx])
    clean = D.gather_batch(digits, "clean", jnp.asarray(idx))
    np.testing.assert_array_equal(clean["image"], digits.images[digits.clean_index[idx]])
    with pytest.raises(ConfigError, match=r"which='test'.*'noisy', 'clean'"):
        D.gather_batch(digits, "test", idx)


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda d: D.noisy_stream(d, jax.random.key(0), 10_000), r"data\.batch_size=10000"),
        (lambda d: D.noisy_stream(d, jax.random.key(0), 0), r"data\.batch_size=0"),
        (lambda d: D.clean_stream(d, jax.random.key(0), 1000), r"data\.clean_batch_size=1000"),
        (lambda d: D.tf_dataset(d, jax.random.key(0), 1000, "clean"), r"data\.clean_batch_size"),
        (lambda d: D.epoch_batches(jax.random.key(0), 0, 10, 11), r"data\.batch_size=11"),
        (lambda d: D.stream_batch(jax.random.key(0), 0, 10, 11), r"data\.clean_batch_size=11"),
    ],
)
def test_batch_larger_than_set(digits, call, pattern):
    with pytest.raises(ConfigError, match=pattern + r".*allowed values: an integer in \[1, "):
        call(digits)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(noise_rate=1.2), r"noise\.rate=1\.2.*allowed values: a number in \[0, 1\]"),
        (dict(noise_rate=-0.1), r"noise\.rate=-0\.1.*allowed values: a number in \[0, 1\]"),
        (dict(noise_kind="asym"), r"noise\.kind='asym'.*\('uniform', 'flip', 'pair'\)"),
        (dict(dataset="svhn"), r"data\.dataset='svhn'.*\('cifar10', 'cifar100', 'digits'\)"),
        (dict(clean_fraction=0.0), r"data\.clean_fraction=0\.0.*allowed values: a number in"),
        (
            dict(clean_fraction=0.98),
            r"data\.clean_fraction=0\.98.*values that.*class 8, which has 139",
        ),
    ],
)
def test_build_data_bad_input(kwargs, pattern):
    args = dict(dataset="digits", seed=0, noise_kind="uniform", noise_rate=0.2)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=pattern):
        D.build_data(args.pop("dataset"), **args)
