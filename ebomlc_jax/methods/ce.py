"""CE: plain cross-entropy on the noisy batch plus the clean batch (the floor to beat)."""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from ebomlc_jax import bilevel
from ebomlc_jax.methods import common
from ebomlc_jax.methods.registry import register


@register("ce")
@dataclasses.dataclass(frozen=True, kw_only=True)
class CE(common.Method):
    """One training-mode pass over noisy and clean images together (one set of BN statistics)."""

    uses_meta: ClassVar[bool] = False

    def _step(self, state, noisy_batch, clean_batch):
        lr, _, state = self.begin(state, 0)
        both = {k: jnp.concatenate([noisy_batch[k], clean_batch[k]]) for k in ("image", "label")}
        objective = bilevel.upper_objective(both, self.apply_fn(state), None)  # Eq. 2 on both
        loss, aux, (grads, _) = bilevel.value_and_grads(objective, state["main"]["params"], None)
        state = self.update_main(state, grads, aux["apply"])
        return state, {"loss": loss, "lr": lr}
