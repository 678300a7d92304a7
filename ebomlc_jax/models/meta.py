"""The label-correction network g_alpha(h(x), y) of the released EBOMLC code (REFERENCE_NOTES 2)."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchStatNorm(nn.Module):
    """BatchNorm1d that always normalises with the current batch's statistics.

    The reference keeps the meta model in training mode in every call, so running averages are
    never read; they are not kept (same parameters as BatchNorm1d: scale and bias).
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        mean = jnp.mean(x, axis=0)
        var = jnp.mean(jnp.square(x - mean), axis=0)  # biased, as PyTorch normalises
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class MetaNet(nn.Module):
    """[stop_grad(h), emb(y)] -> Linear, tanh, Dropout, Linear, tanh, BN, Linear -> softmax.

    `dropout_rate=0` and `batch_norm=False` give microsoft/MLC's meta model.
    """

    num_classes: int
    embed_dim: int = 128
    hidden_dim: int = 128
    dropout_rate: float = 0.3
    batch_norm: bool = True

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
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
        x = jnp.tanh(dense(self.hidden_dim, "fc2")(x))
        if self.batch_norm:
            x = BatchStatNorm(name="bn")(x)
        return jax.nn.softmax(dense(self.num_classes, "fc3")(x), axis=-1)
