"""MLC-D (Algorithm 1): MLC with BOME's dynamic barrier, k lookahead steps, no hypergradient."""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from ebomlc_jax import bilevel
from ebomlc_jax.errors import check_number
from ebomlc_jax.methods import common, label_correction
from ebomlc_jax.methods.registry import register


@register("mlc_d")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MLCD(label_correction.LabelCorrection):
    """w <- w - eta (grad_w F + beta grad_w Q), alpha <- alpha - eta_a beta grad_a Q (Eq. 6-7).

    The main model restarts from w after the k-step lookahead (as Algorithm 1 and the released
    code do); the released code's stale-gradient optimiser call is not reproduced.
    """

    k: int = 5
    delta: float = 0.5  # released code's hard-coded value (the paper does not state one)

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "k": 5,  # lookahead steps of Algorithm 1 (plain SGD; DEVIATES from the released code,
            #   whose lookahead has momentum and weight decay)
            "delta": 0.5,  # barrier delta of Eq. 7: the released code's hard-coded value (the
            #   paper gives none)
            **label_correction.lower_loss_fields(),
        }

    @classmethod
    def check(cls, hp: Mapping[str, Any]) -> None:
        super().check(hp)
        check_number(cls.field("k"), hp["k"], 1, float("inf"), high_open=True, integer=True)
        check_number(cls.field("delta"), hp["delta"], 0, float("inf"), low_open=True)

    def _step(self, state, noisy_batch, clean_batch):
        lr, (key,), state = self.begin(state, 1)
        upper, (lower,) = self.objectives(state, noisy_batch, clean_batch, [key])
        w, alpha = state["main"]["params"], state["meta"]["params"]
        (d_main, d_meta), aux = bilevel.barrier_direction(
            upper, lower, w, alpha, delta=self.delta, xi=1.0, lr=lr, steps=self.k
        )
        state = self.update_main(state, d_main, aux["aux"]["apply"])
        state = self.update_meta(state, d_meta)
        return state, {
            "G": aux["G"],
            "G_inner": aux["G_inner"],
            "F": aux["F"],
            "Q": aux["Q"],
            "beta": aux["beta"],
            "grad_Q_norm": aux["grad_Q_norm"],
            "grad_F_norm": aux["grad_F_norm"],
            "alignment": aux["alignment"],
            "lr": lr,
            "meta_lr": jnp.asarray(self.meta_lr),
            **common.meta_accuracy(aux["aux"]["targets"], noisy_batch),
        }
