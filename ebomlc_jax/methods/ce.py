"""CE: plain cross-entropy on the noisy batch plus the clean batch (the floor to beat)."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from ebomlc_jax import bilevel
from ebomlc_jax.methods import common
from ebomlc_jax.methods.registry import register


@register("ce")
@dataclasses.dataclass(frozen=True, kw_only=True)
class CE(common.Method):
    """One training-mode pass over noisy and clean images together (one set of BN statistics)."""

    uses_meta: ClassVar[bool] = False

    def step(self, state, noisy_batch, clean_batch):
        lr, _, state = self.begin(state, 0)
        images = jnp.concatenate([noisy_batch["image"], clean_batch["image"]])
        labels = jnp.concatenate([noisy_batch["label"], clean_batch["label"]])
        apply = common.main_apply(self.main_model, state["main"]["batch_stats"])

        def loss_fn(params):
            logits, _, stats = apply(params, images)
            return bilevel.cross_entropy(logits, labels), stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["main"]["params"])
        state = self.update_main(state, grads, stats)
        return state, {"loss": loss, "lr": lr}
