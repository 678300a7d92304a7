"""EBOMLC: Algorithm 2 as written (`variant="paper"`) or the released code's step ("reference").

The differences between the two are listed in docs/reference_notes.md, section 4.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ebomlc_jax import bilevel
from ebomlc_jax.errors import allowed, check_bool, check_choice, check_number
from ebomlc_jax.methods import common, label_correction
from ebomlc_jax.methods.registry import register

VARIANTS = ("paper", "reference")


def logit_probability_mixture(
    logits: jax.Array, meta_probs: jax.Array, labels: jax.Array, rho: jax.Array | float
) -> jax.Array:
    """The released upper loss: CE(rho * logits + (1 - rho) * meta probabilities, y) (item 3)."""
    return bilevel.cross_entropy(rho * logits + (1 - rho) * meta_probs, labels)


@register("ebomlc")
@dataclasses.dataclass(frozen=True, kw_only=True)
class EBOMLC(label_correction.LabelCorrection):
    """EBOMLC; `variant`: the paper's equations or the released code (reference notes 4)."""

    variant: str = "paper"
    rho: float = 0.2
    xi: float = 0.5
    delta: float = 0.25
    k: int = 1  # inner steps of the value gap (paper variant)
    keep_inner_step: bool = True  # paper variant: start the optimiser step from w1, not w
    q_as_optimizer_delta: bool = False  # reference variant, CIFAR-100 branch (item 5)

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "variant": "paper",  # paper (Algorithm 2) | reference (the released step_ebomlc)
            "rho": 0.2,  # Eq. 9 mixture weight
            "xi": 0.5,  # Eq. 12 scale of beta-bar in (0, 1]: Eq. 12 asks (0, 1), Fig. 9 runs 1 too
            "delta": 0.25,  # Eq. 10-11 barrier
            "k": 1,  # inner steps of the value gap Q (Eq. 8: one; Fig. 7 tries 1, 2, 5); paper only
            "keep_inner_step": True,  # DEVIATES from Algorithm 2's text (optimiser step from w):
            #   the step starts from w1, as the released code does (paper variant only)
            "q_as_optimizer_delta": common.placeholder(bool),  # reference variant, item 5;
            #   None: as released (on for every dataset but cifar10)
            **label_correction.lower_loss_fields(),
        }

    @classmethod
    def hyperparameters(cls, config: common.Config) -> dict[str, Any]:
        hp = super().hyperparameters(config)
        if hp["q_as_optimizer_delta"] is None:  # released: `if dataset != 'cifar10'`
            hp["q_as_optimizer_delta"] = config.data.dataset != "cifar10"
        return hp

    @classmethod
    def check(cls, hp: Mapping[str, Any]) -> None:
        super().check(hp)
        check_choice(cls.field("variant"), hp["variant"], VARIANTS)
        check_number(cls.field("rho"), hp["rho"], 0, 1, low_open=True)
        check_number(cls.field("xi"), hp["xi"], 0, 1, low_open=True)
        check_number(cls.field("delta"), hp["delta"], 0, float("inf"), low_open=True)
        check_number(cls.field("k"), hp["k"], 1, float("inf"), high_open=True, integer=True)
        if hp["variant"] == "reference" and hp["k"] != 1:
            raise allowed(cls.field("k"), hp["k"], "1 with variant='reference' (the released step)")
        for name in ("keep_inner_step", "q_as_optimizer_delta"):
            check_bool(cls.field(name), hp[name])

    @classmethod
    def variant_of(cls, hp: Mapping[str, Any]) -> str:
        return hp["variant"]

    def _step(self, state, noisy_batch, clean_batch):
        if self.variant == "paper":
            return self._paper_step(state, noisy_batch, clean_batch)
        return self._reference_step(state, noisy_batch, clean_batch)

    def _paper_step(self, state, noisy_batch, clean_batch):
        """Algorithm 2: w <- w - eta_w (grad_w F + xi beta grad_w Q), alpha likewise (Eq. 13-14).

        One dropout mask for F and one shared by G(w) and G(w1), so Q is a gap of one function.
        With `keep_inner_step`, the optimiser's step is added to w1 instead of w (weight decay
        still at w), so the two settings differ by exactly the inner step. With k > 1, w1 is
        w_k, k plain SGD steps of G on the same batch (Q = G(w) - G(w_k), Fig. 7's ablation).
        """
        lr, keys, state = self.begin(state, 2)
        upper, (lower,) = self.objectives(
            state, noisy_batch, clean_batch, keys[1:], keys[0], self.rho, bilevel.mixture_nll
        )
        w, alpha = state["main"]["params"], state["meta"]["params"]
        (d_main, d_meta), aux = bilevel.barrier_direction(
            upper, lower, w, alpha, delta=self.delta, xi=self.xi, lr=lr, steps=self.k
        )
        start = aux["inner_params"] if self.keep_inner_step else w
        state = self.update_main(state, d_main, aux["aux"]["apply"], start=start, decay_at=w)
        state = self.update_meta(state, d_meta)
        return state, self._measure(aux, lr, noisy_batch)

    def _reference_step(self, state, noisy_batch, clean_batch):
        """The released `step_ebomlc` (docs/reference_notes.md, section 4, items 1-8; no eta quirk).

        u_F = -eta (mu b + grad_w F + lambda w); w1 = w + sgd_delta(grad_w G(w)) is kept;
        beta = xi relu((delta ||dQ||^2 - <dQ_w, u_F>) / (||dQ||^2 + 1e-8));
        main: SGD step from w1 along beta dQ_w + u_F; meta: AMSGrad along beta dQ_a + grad_a F.
        """
        lr, keys, state = self.begin(state, 3)
        upper, (lower, lower_inner) = self.objectives(
            state, noisy_batch, clean_batch, keys[1:], keys[0], self.rho, logit_probability_mixture
        )
        w, alpha = state["main"]["params"], state["meta"]["params"]
        trace = common.momentum_buffer(state["main_opt"])
        delta_of = lambda params, grads: common.sgd_delta(  # noqa: E731
            params, grads, trace, lr, self.momentum, self.weight_decay
        )

        f, _, (grad_f_main, grad_f_meta) = bilevel.value_and_grads(upper, w, alpha)
        u_f = delta_of(w, grad_f_main)
        q, (dq_main, dq_meta), info = bilevel.one_step_gap(
            lower,
            w,
            alpha,
            lr,
            inner_step=lambda p, g: jax.tree.map(jnp.add, p, delta_of(p, g)),
            lower_at_inner=lower_inner,
        )
        w1 = info["inner_params"]
        sq = bilevel.tree_sq_norm((dq_main, dq_meta))
        alignment = bilevel.tree_vdot(dq_main, u_f)
        beta = jnp.maximum((self.delta * sq - alignment) / (sq + 1e-8), 0.0)
        if self.q_as_optimizer_delta:
            dq_main = delta_of(w1, dq_main)
        grad_main = bilevel.tree_axpy(self.xi * beta, dq_main, u_f)
        grad_meta = bilevel.tree_axpy(self.xi * beta, dq_meta, grad_f_meta)
        state = self.update_main(state, grad_main, info["aux"]["apply"], start=w1, decay_at=w1)
        state = self.update_meta(state, grad_meta)
        aux = {
            **info,
            "F": f,
            "Q": q,
            "beta": beta,
            "alignment": alignment,
            "grad_Q_norm": jnp.sqrt(sq),
            "grad_F_norm": jnp.sqrt(bilevel.tree_sq_norm((grad_f_main, grad_f_meta))),
        }
        return state, self._measure(aux, lr, noisy_batch)

    def _measure(self, aux, lr, noisy_batch):
        return {
            "G": aux["G"],
            "G_inner": aux["G_inner"],
            "F": aux["F"],
            "Q": aux["Q"],
            "beta": aux["beta"],
            "xi_beta": self.xi * aux["beta"],
            "grad_Q_norm": aux["grad_Q_norm"],
            "grad_F_norm": aux["grad_F_norm"],
            "alignment": aux["alignment"],
            "lr": lr,
            "meta_lr": jnp.asarray(self.meta_lr),
            **common.meta_accuracy(aux["aux"]["targets"], noisy_batch),
        }
