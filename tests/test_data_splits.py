"""The clean/noisy split: disjoint, covering, exactly balanced, seeded, loud on bad fractions."""

import numpy as np
import pytest

from ebomlc_jax.data.splits import split_clean_noisy
from ebomlc_jax.errors import ConfigError


def _labels(n, k, seed=0):
    return np.random.RandomState(seed).permutation(np.arange(n) % k)


@pytest.mark.parametrize("k, per_class", [(10, 100), (100, 10)])
def test_split_cifar_sizes(k, per_class):
    labels = _labels(50_000, k)
    clean, noisy = split_clean_noisy(labels, k, 0.02, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[clean], minlength=k), per_class)
    assert len(clean) == per_class * k and len(noisy) == 50_000 - per_class * k
    assert np.intersect1d(clean, noisy).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([clean, noisy])), np.arange(50_000))
    assert (np.diff(clean) > 0).all() and (np.diff(noisy) > 0).all()


def test_split_is_seeded():
    labels = _labels(5000, 10)
    a, _ = split_clean_noisy(labels, 10, 0.02, seed=3)
    b, _ = split_clean_noisy(labels, 10, 0.02, seed=3)
    c, _ = split_clean_noisy(labels, 10, 0.02, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unbalanced_labels_still_give_balanced_clean_set():
    labels = np.concatenate([np.zeros(900, int), np.ones(100, int)])
    clean, _ = split_clean_noisy(labels, 2, 0.1, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[clean]), [50, 50])


def test_class_without_noisy_example():
    labels = np.concatenate([np.arange(1000) % 9, [9]])  # Class 9 has a single example.
    with pytest.raises(ConfigError, match=r"data\.clean_fraction.*class 9, which has 1 example"):
        split_clean_noisy(labels, 10, 0.02, seed=0)


def test_class_with_no_examples():
    labels = np.arange(1000) % 9  # Class 9 is absent.
    with pytest.raises(ConfigError, match=r"data\.clean_fraction.*class 9, which has 0 example"):
        split_clean_noisy(labels, 10, 0.02, seed=0)


def test_fraction_too_small_for_one_clean_example():
    with pytest.raises(ConfigError, match=r"data\.clean_fraction.*no clean example"):
        split_clean_noisy(_labels(1000, 10), 10, 0.001, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0, float("nan"), "0.02"])
def test_fraction_outside_open_unit_interval(fraction):
    with pytest.raises(ConfigError, match=r"data\.clean_fraction.*allowed values: a number in"):
        split_clean_noisy(_labels(1000, 10), 10, fraction, seed=0)
