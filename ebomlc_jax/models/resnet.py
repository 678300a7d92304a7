"""CIFAR ResNet (He et al. 2016, option-A shortcuts) returning logits and the pooled feature h.

A plain flax module. Like flax's ImageNet ResNet it takes its convolution as a field (`conv`),
and the function applied to each block's output (`block_output`, the identity by default), so
a caller can swap in platform-specific versions (the run path passes `ebomlc_jax.cpu`'s on every
platform; they are lax's convolution and the identity except on a CPU).
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ModuleDef = Any

# Kaiming-normal, fan_in, gain sqrt(2), *untruncated* (PyTorch's kaiming_normal_, used by the
# reference); flax's default he_normal is truncated.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def torch_linear_bias(fan_in: int):
    """PyTorch's default nn.Linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def identity(x: jax.Array) -> jax.Array:
    """The default `block_output`."""
    return x


def conv3x3(conv: ModuleDef, features: int, strides: int, dtype, name: str) -> nn.Module:
    """3x3 convolution without bias, Kaiming-normal weights (the reference's `conv3x3`)."""
    return conv(
        features,
        (3, 3),
        (strides, strides),
        padding=1,
        use_bias=False,
        kernel_init=kaiming_normal,
        dtype=dtype,
        name=name,
    )


class BatchNorm(nn.BatchNorm):
    """flax BatchNorm that can normalise consecutive row segments each with its own statistics.

    `segments=(n1, n2, ...)` (static, summing to the batch) makes one pass over a concatenation
    of batches equal, up to float rounding, to one pass per batch: each segment's rows are
    normalised with that segment's mean and variance (flax's formulas: float32 statistics,
    E[x^2] - E[x]^2, global over `axis_name`), and the running averages are updated from the
    first segment's, as if only the pass over it had been kept. Same variables as nn.BatchNorm.
    """

    @nn.compact
    def __call__(self, x, use_running_average=None, *, segments=None):
        train = not nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        if segments is None or len(segments) == 1 or not train or self.is_initializing():
            return super().__call__(x, use_running_average)
        if sum(segments) != x.shape[0]:
            raise ValueError(f"segments {segments} do not sum to the batch size {x.shape[0]}")
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        axes = tuple(range(x.ndim - 1))
        parts = jnp.split(
            x.astype(jnp.promote_types(x.dtype, jnp.float32)), np.cumsum(segments)[:-1]
        )
        moments = jnp.stack(
            [jnp.stack([part.mean(axes), jnp.square(part).mean(axes)]) for part in parts]
        )  # [segments, 2, features]
        if self.axis_name is not None:
            moments = jax.lax.pmean(moments, self.axis_name)
        mean, mean2 = moments[:, 0], moments[:, 1]
        var = jnp.maximum(0.0, mean2 - jnp.square(mean))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean[0]
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var[0]

        def rows(v):  # [segments, features] -> [batch, 1, ..., 1, features]
            v = jnp.concatenate(
                [jnp.broadcast_to(v[i], (n, features)) for i, n in enumerate(segments)]
            )
            return v.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (features,))

        y = x - rows(mean)  # the order of flax's _normalize
        y *= rows(jax.lax.rsqrt(var + self.epsilon)) * scale
        y += bias
        return jnp.asarray(y, nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype))


def batch_norm(train: bool, dtype, axis_name: str | None, name: str) -> BatchNorm:
    """PyTorch BatchNorm2d: eps 1e-5, running-average momentum 0.1 (= flax momentum 0.9)."""
    return BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        axis_name=axis_name,
        name=name,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BN; option-A shortcut (stride-2 subsample + zero channel pad)."""

    features: int
    strides: int
    dtype: jnp.dtype = jnp.float32
    bn_axis_name: str | None = None
    conv: ModuleDef = nn.Conv
    block_output: Callable[[jax.Array], jax.Array] = identity

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, segments=None) -> jax.Array:
        y = conv3x3(self.conv, self.features, self.strides, self.dtype, "conv1")(x)
        y = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name, "bn1")(y, segments=segments))
        y = conv3x3(self.conv, self.features, 1, self.dtype, "conv2")(y)
        y = batch_norm(train, self.dtype, self.bn_axis_name, "bn2")(y, segments=segments)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = x[:, :: self.strides, :: self.strides, :]
            pad = self.features - x.shape[-1]
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
        return self.block_output(nn.relu(y + shortcut))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: stem, stages, global average pool, linear head.

    Returns `(logits [B, K], features [B, widths[-1]])`; any input size divisible by 4 works.
    `bn_axis_name` makes BatchNorm use global-batch statistics under pmap. `segments` (training
    only) runs several batches, concatenated, in one pass with per-batch BN statistics. `conv`
    builds every convolution (flax's `nn.Conv` signature); `block_output` maps each residual
    block's output (identity by default).
    """

    num_classes: int
    blocks_per_stage: int = 5
    widths: Sequence[int] = (16, 32, 64)
    dtype: jnp.dtype = jnp.float32
    bn_axis_name: str | None = None
    conv: ModuleDef = nn.Conv
    block_output: Callable[[jax.Array], jax.Array] = identity

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = True, segments: tuple[int, ...] | None = None
    ) -> tuple[jax.Array, jax.Array]:
        x = conv3x3(self.conv, self.widths[0], 1, self.dtype, "conv")(x.astype(self.dtype))
        x = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name, "bn")(x, segments=segments))
        for stage, width in enumerate(self.widths):
            for block in range(self.blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(
                    width,
                    strides,
                    self.dtype,
                    self.bn_axis_name,
                    self.conv,
                    self.block_output,
                    name=f"stage{stage}_block{block}",
                )(x, train, segments)
        features = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
        logits = nn.Dense(
            self.num_classes,
            kernel_init=kaiming_normal,
            bias_init=torch_linear_bias(features.shape[-1]),
            name="head",
        )(features)
        return logits, features


def resnet32(
    num_classes: int,
    dtype: jnp.dtype = jnp.float32,
    bn_axis_name: str | None = None,
    **fields: Any,
) -> CifarResNet:
    """The paper's main model: ResNet-32, 16/32/64 channels, 5 blocks per stage.

    `fields` go to CifarResNet (e.g. `conv` and `block_output`, see `ebomlc_jax.cpu.prepare`).
    """
    return CifarResNet(num_classes, 5, (16, 32, 64), dtype, bn_axis_name, **fields)


def from_config(
    model_config: Any, num_classes: int, axis_name: str | None = None, **fields: Any
) -> CifarResNet:
    """The main model of a run's `config.model` block (blocks per stage, widths, dtype)."""
    return CifarResNet(
        num_classes,
        model_config.blocks_per_stage,
        tuple(model_config.widths),
        jnp.dtype(model_config.dtype),
        bn_axis_name=axis_name,
        **fields,
    )
