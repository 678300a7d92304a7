"""MLC (microsoft/MLC, k=1): momentum SGD on G for the main model, exact hypergradient for meta."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ebomlc_jax import bilevel
from ebomlc_jax.methods import common, label_correction
from ebomlc_jax.methods.registry import register


@register("mlc")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MLC(label_correction.LabelCorrection):
    """v = grad_w G(w); w' = w - eta (mu b + v + lambda w); meta: d/d alpha CE_clean(w'(alpha)).

    With k = 1 the released code's accumulated gamma term is always multiplied by zero, so the
    meta gradient is the exact one-step unrolled hypergradient (docs/reference_notes.md, section
    6). The meta network is EBOMLC's (`config.model.meta_*`: dropout and BN, N(0, 1) label
    embedding), as in the authors' `step_mlc`; microsoft/MLC's has neither and a Xavier
    embedding.
    """

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return label_correction.lower_loss_fields()

    def _step(self, state, noisy_batch, clean_batch):
        lr, (key,), state = self.begin(state, 1)
        upper, (lower,) = self.objectives(state, noisy_batch, clean_batch, [key])
        w, alpha = state["main"]["params"], state["meta"]["params"]
        trace = common.momentum_buffer(state["main_opt"])
        # The alpha-free part of the optimiser lookahead: -eta (mu b + lambda w).
        shift = common.sgd_delta(
            w, jax.tree.map(jnp.zeros_like, w), trace, lr, self.momentum, self.weight_decay
        )
        d_meta, aux = bilevel.unrolled_hypergradient(
            upper, lower, w, alpha, lr=lr, lookahead_shift=shift
        )
        state = self.update_main(state, aux["grad_G"], aux["aux"]["apply"])
        state = self.update_meta(state, d_meta)
        return state, {
            "G": aux["G"],
            "F_lookahead": aux["F_lookahead"],
            "lr": lr,
            "meta_lr": jnp.asarray(self.meta_lr),
            "meta_grad_norm": jnp.sqrt(bilevel.tree_sq_norm(d_meta)),
            **common.meta_accuracy(aux["aux"]["targets"], noisy_batch),
        }
