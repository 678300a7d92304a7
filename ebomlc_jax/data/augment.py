"""On-device augmentation of the released code: reflect-pad, random crop, random horizontal flip."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ebomlc_jax import errors


def augment(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Per example: reflect-pad `pad` pixels, random crop back to H x W, flip with p = 0.5."""
    if images.ndim != 4:
        raise errors.ConfigError(f"augment expects images [B, H, W, C], got shape {images.shape}")
    b, h, w, c = images.shape
    if not isinstance(pad, int) or not 0 <= pad < min(h, w):
        # Reflect padding mirrors interior pixels, so it cannot exceed the image side minus one.
        raise errors.allowed("pad", pad, f"an integer in [0, {min(h, w) - 1}]")
    # Reflect (not zero) padding, as in the MW-Net loader used by MLC and EBOMLC.
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    crop_key, flip_key = jax.random.split(key)
    # Offsets 0..2*pad inclusive: every window of the padded image, as torchvision RandomCrop.
    offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (b,))

    def one(image, offset, flip):
        crop = lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)
