"""CE: plain cross-entropy, the floors every method must beat (on D' and D, D' only, or D only)."""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from ebomlc_jax import bilevel
from ebomlc_jax.errors import check_choice
from ebomlc_jax.methods import common
from ebomlc_jax.methods.registry import register

TRAIN_ON = ("both", "noisy", "clean")


@register("ce")
@dataclasses.dataclass(frozen=True, kw_only=True)
class CE(common.Method):
    """One training-mode pass of Eq. 2 over the batches of `train_on`.

    "both": the noisy and the clean batch concatenated (one set of BN statistics), the floor
    that uses D as ordinary labelled data; "noisy": the usual "standard" baseline on D' alone;
    "clean": D alone (what the clean set buys by itself). Every setting takes the same number of
    steps (a pass over D' per epoch).
    """

    train_on: str = "both"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {"train_on": "both"}  # both (D' and D) | noisy (D' only) | clean (D only)

    @classmethod
    def check(cls, hp: Mapping[str, Any]) -> None:
        check_choice(cls.field("train_on"), hp["train_on"], TRAIN_ON)

    @classmethod
    def variant_of(cls, hp: Mapping[str, Any]) -> str | None:
        return None if hp["train_on"] == "both" else hp["train_on"]

    def _step(self, state, noisy_batch, clean_batch):
        lr, _, state = self.begin(state, 0)
        batches = {"both": (noisy_batch, clean_batch), "noisy": (noisy_batch,)}
        parts = batches.get(self.train_on, (clean_batch,))
        batch = {k: jnp.concatenate([b[k] for b in parts]) for k in ("image", "label")}
        objective = bilevel.upper_objective(batch, self.apply_fn(state), None)  # Eq. 2
        loss, aux, (grads, _) = bilevel.value_and_grads(objective, state["main"]["params"], None)
        state = self.update_main(state, grads, aux["apply"])
        return state, {"loss": loss, "lr": lr}
