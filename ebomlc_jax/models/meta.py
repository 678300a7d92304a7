"""The label-correction network g_alpha(h(x), y) of the released EBOMLC code.

As described in docs/reference_notes.md, section 2.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchStatNorm(nn.Module):
    """BatchNorm1d that always normalises with the current batch's statistics.

    The reference keeps the meta model in training mode in every call, so running averages are
    never read; they are not kept (same parameters as BatchNorm1d: scale and bias).
    """

    epsilon: float = 1e-5
    axis_name: str | None = None  # pmap: statistics of the global batch

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        mean = self._mean(x)
        var = self._mean(jnp.square(x - mean))  # biased, as PyTorch normalises
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias

    def _mean(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=0)
        return mean if self.axis_name is None else jax.lax.pmean(mean, self.axis_name)


class GlobalDropout(nn.Module):
    """Inverted dropout whose mask is drawn for the global batch.

    Under pmap each device keeps its own rows of the one global mask, so a pmap run draws the
    same masks as a single-device run of the whole batch.
    """

    rate: float
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0:
            return x
        rng = self.make_rng("dropout")
        rows = x.shape[0]
        if self.axis_name is None:
            keep = jax.random.bernoulli(rng, 1 - self.rate, x.shape)
        else:
            size = jax.lax.psum(1, self.axis_name)
            keep = jax.random.bernoulli(rng, 1 - self.rate, (rows * size, *x.shape[1:]))
            start = jax.lax.axis_index(self.axis_name) * rows
            keep = jax.lax.dynamic_slice_in_dim(keep, start, rows)
        return jnp.where(keep, x / (1 - self.rate), 0.0)


class MetaNet(nn.Module):
    """[stop_grad(h), emb(y)] -> Linear, tanh, Dropout, Linear, tanh, BN, Linear -> softmax.

    `dropout_rate=0` and `batch_norm=False` give microsoft/MLC's meta model.
    """

    num_classes: int
    embed_dim: int = 128
    hidden_dim: int = 128
    dropout_rate: float = 0.3
    batch_norm: bool = True
    axis_name: str | None = None  # pmap axis: global-batch BN statistics and dropout masks

    @nn.compact
    def __call__(
        self, features: jax.Array, labels: jax.Array, deterministic: bool = False
    ) -> jax.Array:
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n,
            kernel_init=nn.initializers.xavier_normal(),
            bias_init=nn.initializers.zeros,
            name=name,
        )
        emb = nn.Embed(
            self.num_classes,
            self.embed_dim,
            embedding_init=nn.initializers.normal(1.0),
            name="label_embedding",
        )(labels)
        x = jnp.concatenate([jax.lax.stop_gradient(features), emb], axis=-1)
        x = jnp.tanh(dense(self.hidden_dim, "fc1")(x))
        x = GlobalDropout(self.dropout_rate, self.axis_name, name="dropout")(x, deterministic)
        x = jnp.tanh(dense(self.hidden_dim, "fc2")(x))
        if self.batch_norm:
            x = BatchStatNorm(axis_name=self.axis_name, name="bn")(x)
        return jax.nn.softmax(dense(self.num_classes, "fc3")(x), axis=-1)


def meta_from_config(model_config: Any, num_classes: int, axis_name: str | None = None) -> MetaNet:
    """The meta model of a run's `config.model` block (embedding, hidden width, dropout, BN)."""
    return MetaNet(
        num_classes,
        model_config.meta_embed_dim,
        model_config.meta_hidden_dim,
        model_config.meta_dropout,
        model_config.meta_batch_norm,
        axis_name=axis_name,
    )
