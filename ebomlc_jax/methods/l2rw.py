"""L2RW, learning to reweight examples (Ren et al., ICML 2018, Algorithm 1; uber-research/
learning-to-reweight-examples, models/reweight_model.py).

Each noisy example i gets the weight -d/d eps_i of the clean loss after one lookahead step on
sum_i eps_i l_i, at eps = 0; clipped at zero and normalised over the batch. At eps = 0 the lookahead
point is w itself, so the derivative is lr <grad_w l_i(w), grad_w L_clean(w)>: one JVP of the
per-example loss vector along the clean gradient (forward mode), and the weighted step's gradient
is the transpose of the same linearisation. No double backward, no per-example gradients.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ebomlc_jax import bilevel
from ebomlc_jax.errors import check_bool
from ebomlc_jax.methods import common
from ebomlc_jax.methods.registry import register

PyTree = Any
PerExample = Callable[[PyTree], tuple[jax.Array, Any]]  # params -> ([B] losses, aux)


def normalize_weights(raw: jax.Array, axis_name: str | None = None) -> jax.Array:
    """max(raw, 0) / (sum + [sum == 0]): Algorithm 1 lines 11-12, reweight_autodiff.

    All zero stays all zero (the delta(sum) term only avoids 0/0), as in the paper and the code.
    Under pmap the sum is the global batch's, divided by the device count: each device's weighted
    sum is then averaged by the gradient's pmean into the global batch's.
    """
    plus = jnp.maximum(raw, 0.0)
    total = jnp.sum(plus)
    if axis_name is not None:
        total = jax.lax.pmean(total, axis_name)
    return plus / (total + (total == 0).astype(total.dtype))


def reweighted_gradient(
    per_example: PerExample,
    clean_loss: Callable[[PyTree], jax.Array],
    params: PyTree,
    lr: jax.Array | float,
    axis_name: str | None = None,
    clean_decay: float = 0.0,
) -> tuple[PyTree, dict[str, Any]]:
    """grad_w sum_i w_i l_i(w) with L2RW's weights w_i, and the pieces (Algorithm 1, lines 4-12).

    raw_i = -d/d eps_i L_clean(w - lr grad_w sum_j eps_j l_j(w)) at eps = 0
          = lr <grad_w l_i(w), grad_w L_clean(w)>,
    the JVP of the loss vector along the clean gradient; the weights are `normalize_weights(raw)`
    (a positive lr cancels there). `clean_decay` adds an L2 term clean_decay/2 ||w||^2 to
    L_clean (its gradient, clean_decay * w). info: raw, weights, losses, aux (of `per_example`),
    clean_loss (without the L2 term).
    """
    losses, linear, aux = jax.linearize(per_example, params, has_aux=True)
    clean, clean_grad = jax.value_and_grad(clean_loss)(params)
    if clean_decay:
        clean_grad = jax.tree.map(lambda g, w: g + clean_decay * w, clean_grad, params)
    raw = lr * linear(clean_grad)
    weights = jax.lax.stop_gradient(normalize_weights(raw, axis_name))
    (grad,) = jax.linear_transpose(linear, params)(weights)
    return grad, {
        "raw": raw,
        "weights": weights,
        "losses": losses,
        "aux": aux,
        "clean_loss": clean,
    }


def weight_by_correctness(
    weights: jax.Array, batch: common.Batch, axis_name: str | None = None
) -> dict[str, jax.Array]:
    """Mean of batch size x weight (1: uniform) over mislabelled and correctly labelled examples
    (0 when a group is empty), from true_label: a diagnostic, never a training input. Under pmap
    the means are over the global batch (each device's weights are the global ones x devices)."""
    groups = common.mean_by_correctness(weights * weights.shape[0], batch, axis_name)
    return {f"weight_{k}": v for k, v in groups.items()}


@register("l2rw")
@dataclasses.dataclass(frozen=True, kw_only=True)
class L2RW(common.Method):
    """Weights from the clean batch, then one step of the main optimiser on sum_i w_i l_i over the
    noisy batch. The clean batch enters only through the weights (as in the paper and the code).

    BatchNorm: every pass is in training mode (batch statistics, gradients through them, as the
    code's reweighting graph); the running statistics are those of the noisy batch's pass (the
    code's weighted training step updates them), the clean pass's are dropped.
    """

    clean_weight_decay: bool = True

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "clean_weight_decay": True,  # DEVIATES from Algorithm 1 (the plain clean loss; False)
            #   as the released CIFAR code does: the clean cost adds its L2 term lambda/2 ||w||^2
            #   (lambda = optim.weight_decay), so the clean gradient gains lambda w
        }

    @classmethod
    def check(cls, hp: Mapping[str, Any]) -> None:
        check_bool(cls.field("clean_weight_decay"), hp["clean_weight_decay"])

    def _step(self, state, noisy_batch, clean_batch):
        lr, _, state = self.begin(state, 0)
        apply = self.apply_fn(state)

        def per_example(params):
            logits, _, stats = apply(params, noisy_batch["image"])
            return bilevel.cross_entropies(logits, noisy_batch["label"]), stats

        def clean_loss(params):
            logits = apply(params, clean_batch["image"])[0]
            return bilevel.cross_entropy(logits, clean_batch["label"])

        decay = self.weight_decay if self.clean_weight_decay else 0.0
        grads, info = reweighted_gradient(
            per_example, clean_loss, state["main"]["params"], lr, self.axis_name, decay
        )
        state = self.update_main(state, grads, info["aux"])
        weights = info["weights"]
        return state, {
            "loss": jnp.sum(weights * info["losses"]),
            "noisy_loss": jnp.mean(info["losses"]),
            "clean_loss": info["clean_loss"],
            "lr": lr,
            "zero_weight_fraction": jnp.mean((weights == 0).astype(jnp.float32)),
            **weight_by_correctness(weights, noisy_batch, self.axis_name),
        }
