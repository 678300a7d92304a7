"""Augmentation: reflect-pad + random crop + horizontal flip, per example, on device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebomlc_jax.data.augment import augment
from ebomlc_jax.errors import ConfigError

PAD = 2
augment_jit = jax.jit(functools.partial(augment, pad=PAD))


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.RandomState(0).randint(0, 256, (128, 6, 6, 3)), jnp.uint8)


def _windows(image, pad):
    """Every (dy, dx, flipped) crop of the reflect-padded image, computed by hand in NumPy."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy : dy + h, dx : dx + w]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop[:, ::-1]


def test_shape_dtype_and_determinism(images):
    key = jax.random.key(0)
    out = augment_jit(key, images)
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(out, augment_jit(key, images))
    assert not np.array_equal(out, augment_jit(jax.random.key(1), images))
    float_images = images.astype(jnp.float32) / 255
    assert augment_jit(key, float_images).dtype == jnp.float32


def test_every_output_is_a_window_of_the_padded_image(images):
    out = np.asarray(augment_jit(jax.random.key(3), images))
    images = np.asarray(images)
    found = []
    for x, y in zip(images, out, strict=True):
        matches = [where for where, crop in _windows(x, PAD) if np.array_equal(crop, y)]
        assert matches, "output is not a crop of the reflect-padded input"
        found.append(matches[0])
    offsets = {(dy, dx) for dy, dx, _ in found}
    flips = np.mean([f for _, _, f in found])
    assert len(offsets) > 10  # Crops really move around the (2 * PAD + 1)^2 windows...
    assert 0.3 < flips < 0.7  # ...and about half the images are mirrored.


def test_reflect_padding_by_hand():
    # One 3x3 image, pad 1: the top-left 3x3 window of the padded image mirrors row/col 1.
    image = jnp.arange(9, dtype=jnp.uint8).reshape(1, 3, 3, 1)
    windows = dict(_windows(np.asarray(image[0]), 1))
    np.testing.assert_array_equal(windows[(0, 0, False)][..., 0], [[4, 3, 4], [1, 0, 1], [4, 3, 4]])
    for seed in range(20):
        out = np.asarray(augment(jax.random.key(seed), image, pad=1))[0]
        assert any(np.array_equal(out, crop) for crop in windows.values())


def test_flip_without_padding_is_exact_mirror(images):
    out = np.asarray(augment(jax.random.key(5), images, pad=0))
    same = (out == np.asarray(images)).all(axis=(1, 2, 3))
    mirrored = (out == np.asarray(images)[:, :, ::-1]).all(axis=(1, 2, 3))
    assert (same | mirrored).all()
    assert 0.3 < mirrored.mean() < 0.7


def test_bad_pad(images):
    with pytest.raises(ConfigError, match="pad"):
        augment(jax.random.key(0), images, pad=6)
