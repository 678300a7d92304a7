"""Sources: tfds CIFAR loading (mocked), the missing-data message, offline digits, normalize."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from ebomlc_jax.data import sources
from ebomlc_jax.errors import ConfigError

tfds = pytest.importorskip("tensorflow_datasets")


def test_package_import_does_not_load_tensorflow():
    code = (
        "import sys, ebomlc_jax.data\n"
        "bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'sklearn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


@pytest.mark.parametrize("name, k", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_through_mocked_tfds(name, k):
    with tfds.testing.mock_data(num_examples=64):
        src = sources.load_source(name, data_dir="/nonexistent/tfds")
    assert src.name == name and src.num_classes == k
    for images, labels in [
        (src.train_images, src.train_labels),
        (src.test_images, src.test_labels),
    ]:
        assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
        assert labels.shape == (64,) and labels.dtype == np.int32
        assert 0 <= labels.min() and labels.max() < k
    assert src.mean.dtype == np.float32 and src.std.dtype == np.float32
    np.testing.assert_allclose(src.mean * 255, [125.3, 123.0, 113.9], rtol=1e-6)
    np.testing.assert_allclose(src.std * 255, [63.0, 62.1, 66.7], rtol=1e-6)


@pytest.mark.parametrize(
    "name, archive",
    [("cifar10", "cifar-10-binary.tar.gz"), ("cifar100", "cifar-100-binary.tar.gz")],
)
def test_missing_data_says_what_to_do(tmp_path, name, archive):
    with pytest.raises(sources.DatasetUnavailableError) as info:
        sources.load_source(name, data_dir=str(tmp_path), download=False)
    message = str(info.value)
    assert isinstance(info.value, ConfigError)
    assert f"{archive} in {tmp_path / 'downloads' / 'manual'}/" in message
    assert str(tmp_path / name / "3.0.2") in message
    assert "--config.data.download=True" in message


def test_digits_real_offline_data():
    src = sources.load_source("digits")
    assert src.num_classes == 10
    assert src.train_images.shape[1:] == (8, 8, 1) and src.train_images.dtype == np.uint8
    assert len(src.train_labels) + len(src.test_labels) == 1797
    assert len(src.test_labels) == pytest.approx(0.2 * 1797, abs=10)
    # Stratified: every class in both splits, in about the 80/20 ratio.
    train_counts = np.bincount(src.train_labels, minlength=10)
    test_counts = np.bincount(src.test_labels, minlength=10)
    np.testing.assert_allclose(test_counts / (train_counts + test_counts), 0.2, atol=0.01)
    assert src.train_images.max() == 255 and src.train_images.min() == 0
    assert src.train_labels.dtype == np.int32 and src.mean.shape == (1,)
    # Deterministic, independent of any run seed.
    again = sources.load_source("digits")
    np.testing.assert_array_equal(src.train_images, again.train_images)
    np.testing.assert_array_equal(src.test_labels, again.test_labels)
    normalised = sources.normalize(src.train_images, src.mean, src.std)
    np.testing.assert_allclose(normalised.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalised.std(), 1.0, atol=1e-5)


def test_digits_values_match_sklearn():
    from sklearn.datasets import load_digits

    raw = load_digits()
    src = sources.load_source("digits")
    # Each stored train image is a scaled copy of a bundled one (0..16 -> 0..255).
    scaled = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None]
    first = np.flatnonzero((scaled == src.train_images[0]).all(axis=(1, 2, 3)))
    assert first.size >= 1 and raw.target[first[0]] == src.train_labels[0]


def test_normalize_numpy_and_jax():
    images = np.random.RandomState(0).randint(0, 256, size=(2, 4, 4, 3)).astype(np.uint8)
    expected = (images / 255.0 - sources.CIFAR_MEAN) / sources.CIFAR_STD
    out_np = sources.normalize(images, sources.CIFAR_MEAN, sources.CIFAR_STD)
    out_jax = sources.normalize(jnp.asarray(images), sources.CIFAR_MEAN, sources.CIFAR_STD)
    assert out_np.dtype == np.float32 and out_jax.dtype == jnp.float32
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out_np, expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out_jax), expected, rtol=1e-5)


def test_unknown_dataset():
    with pytest.raises(
        ConfigError, match=r"data\.dataset='mnist'.*'cifar10', 'cifar100', 'digits'"
    ):
        sources.load_source("mnist")


def test_wrong_manual_archive_is_reported(tmp_path):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "cifar-10-binary.tar.gz").write_bytes(b"not cifar")
    with pytest.raises(sources.DatasetUnavailableError, match="wrong checksum"):
        sources.load_source("cifar10", data_dir=str(tmp_path), download=True)
