"""MW-Net (Shu et al., NeurIPS 2019): an MLP maps each example's loss to its weight, and is learnt
on the clean batch through a one-step lookahead (xjtushujun/meta-weight-net, `MW-Net.py: train`).

One step, with l_i = CE(f_w(x_i), y_i) on the noisy batch and V_theta the weighting net:
  w'(theta) = w - eta_t (1/n) sum_i V_theta(stop_grad l_i) grad l_i(w)  (plain SGD at the main lr)
  theta <- Adam step (lr 1e-3, L2 1e-4) along d/d theta CE_clean(w'(theta))
  w <- momentum-SGD step along (1/n) sum_i V_theta_new(l_i) grad l_i(w)  (weights held constant)
The PMW-Net paper (same group) restates it as its Eq. 2-4; `pmwnet` reuses this machinery.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ebomlc_jax import bilevel, models
from ebomlc_jax.errors import check_number
from ebomlc_jax.methods import common
from ebomlc_jax.methods.registry import register

PyTree = Any
# weigh(theta, losses) -> (weights [n], penalty): the loss-to-weight map the lookahead uses and a
# regulariser of theta added to the meta objective (PMW-Net's KL term; MW-Net: 0).
Weigh = Callable[[PyTree, jax.Array], tuple[jax.Array, jax.Array]]
# losses_fn(w) -> (per-example losses [n], aux): the noisy batch's training-mode pass.
LossesFn = Callable[[PyTree], tuple[jax.Array, Any]]


def reweighting_hypergradient(
    losses_fn: LossesFn,
    upper: bilevel.Objective,
    main_params: PyTree,
    meta_params: PyTree,
    weigh: Weigh,
    *,
    lr: jax.Array | float,
) -> tuple[PyTree, dict]:
    """d/d theta [F(w'(theta)) + penalty(theta)], w'(theta) = w - lr (1/n) sum_i v_i grad l_i(w).

    (v, penalty) = weigh(theta, stop_grad l(w)). The pattern of bilevel.unrolled_hypergradient:
    with g' = grad F(w') held constant, dF/dv_i = -lr/n <grad l_i(w), g'>, entry i of one JVP of
    the per-example losses along g', pulled back through the weighting net only (no double
    backward; the weights, with any random draw in them, are computed once). The noisy pass is
    linearised once: info["pullback"](c) = sum_i c_i grad l_i(w) also gives the main step's
    gradient with the updated weights (no second pass).
    """
    losses, pullback, aux = jax.vjp(losses_fn, main_params, has_aux=True)
    inputs = jax.lax.stop_gradient(losses)
    n = losses.shape[0]
    (weights, penalty), weigh_pullback = jax.vjp(lambda theta: weigh(theta, inputs), meta_params)
    (grad_lower,) = pullback(weights / n)
    lookahead = bilevel.sgd_step(main_params, grad_lower, lr)
    (f_ahead, _), g_prime = jax.value_and_grad(lambda w: upper(w, None), has_aux=True)(lookahead)
    directional = jax.jvp(lambda w: losses_fn(w)[0], (main_params,), (g_prime,))[1]
    (d_meta,) = weigh_pullback((-lr * directional / n, jnp.ones_like(penalty)))
    info = {
        "losses": inputs,
        "pullback": lambda c: pullback(c)[0],
        "aux": aux,
        "F_lookahead": f_ahead,
        "weights": weights,
        "penalty": penalty,
        "lookahead_params": lookahead,
    }
    return d_meta, info


def weight_measurements(
    weights: jax.Array, batch: common.Batch, axis_name: str | None = None
) -> dict[str, jax.Array]:
    """Mean weight overall and, from "true_label" (analysis only), on mislabelled / correct ones
    (0 if the batch has none); over the global batch under pmap."""
    groups = common.mean_by_correctness(weights, batch, axis_name)
    return {"mean_weight": jnp.mean(weights), **{f"weight_{k}": v for k, v in groups.items()}}


@register("mwnet")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MWNet(common.Method):
    """MW-Net. The weighting net is `meta_model` (by default the one of `hidden_dim`), its
    parameters and Adam state are state["meta"] and state["meta_opt"]."""

    hidden_dim: int = 100
    net_lr: float = 1e-3
    net_weight_decay: float = 1e-4

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "hidden_dim": 100,  # VNet(1, 100, 1): hidden units of the weighting net
            "net_lr": 1e-3,  # optimizer_vnet = torch.optim.Adam(vnet.params(), 1e-3, ...)
            "net_weight_decay": 1e-4,  # ... weight_decay=1e-4 (L2 added to its gradient)
        }

    @classmethod
    def check(cls, hp: Mapping[str, Any]) -> None:
        inf = float("inf")
        check_number(
            cls.field("hidden_dim"), hp["hidden_dim"], 1, inf, high_open=True, integer=True
        )
        check_number(cls.field("net_lr"), hp["net_lr"], 0, inf, low_open=True, high_open=True)
        check_number(cls.field("net_weight_decay"), hp["net_weight_decay"], 0, inf, high_open=True)

    @classmethod
    def weighting_net(cls, hidden_dim: int, axis_name: str | None) -> nn.Module:
        """The loss-to-weight network of this method."""
        return models.WeightNet(hidden_dim, "sigmoid", axis_name)

    def __post_init__(self):
        if self.meta_model is None:  # from_config and methods.create: the net of hidden_dim
            net = self.weighting_net(self.hidden_dim, self.axis_name)
            object.__setattr__(self, "meta_model", net)
        super().__post_init__()

    @property
    def meta_tx(self) -> optax.GradientTransformation:
        """torch.optim.Adam(lr, weight_decay): the decay added to the gradient, then Adam."""
        return optax.chain(
            optax.add_decayed_weights(self.net_weight_decay), optax.adam(self.net_lr, eps=1e-8)
        )

    def init(self, rng: jax.Array, sample_images: jax.Array) -> common.State:
        state = super().init(rng, sample_images)
        key = jax.random.split(rng, 4)[1]  # the key Method.init gives a meta model
        params = self.meta_model.init(key, jnp.zeros((1,), jnp.float32))["params"]
        return {**state, "meta": {"params": params}, "meta_opt": self.meta_tx.init(params)}

    def net_fn(self) -> Callable[[PyTree, jax.Array], Any]:
        """The weighting net as a function of (theta, losses); its gradient is the global one."""
        model, axis_name = self.meta_model, self.axis_name
        return lambda params, losses: model.apply(
            {"params": common.reduce_grad(params, axis_name)}, losses
        )

    # -- what PMW-Net replaces
    def weigh(self, state: common.State, lr: jax.Array, key: jax.Array) -> Weigh:
        """The lookahead's weights v = V_theta(l) and no penalty."""
        net = self.net_fn()
        return lambda theta, losses: (net(theta, losses), jnp.zeros((), jnp.float32))

    def step_weights(self, state: common.State, losses: jax.Array, key: jax.Array) -> jax.Array:
        """The main step's weights, from the updated net: `w_new = vnet(cost_v)` (no gradient)."""
        return self.net_fn()(state["meta"]["params"], losses)

    def _step(self, state, noisy_batch, clean_batch):
        state, measurements, _ = self.reweighting_step(state, noisy_batch, clean_batch)
        return state, measurements

    def reweighting_step(self, state, noisy_batch, clean_batch):
        """(state, measurements, info): the lookahead, the net's step, the main step."""
        lr, (k_ahead, k_main), state = self.begin(state, 2)
        apply = self.apply_fn(state)

        def losses_fn(w):
            logits, _, stats = apply(w, noisy_batch["image"])
            return bilevel.cross_entropies(logits, noisy_batch["label"]), stats

        upper = bilevel.upper_objective(clean_batch, apply, None)  # CE on the clean batch
        d_meta, info = reweighting_hypergradient(
            losses_fn,
            upper,
            state["main"]["params"],
            state["meta"]["params"],
            self.weigh(state, lr, k_ahead),
            lr=lr,
        )
        state = self.update_meta(state, d_meta)
        losses = info["losses"]
        weights = jax.lax.stop_gradient(self.step_weights(state, losses, k_main))
        grad_main = info["pullback"](weights / losses.shape[0])
        state = self.update_main(state, grad_main, info["aux"])
        measurements = {
            "loss": jnp.mean(weights * losses),  # the weighted noisy loss of the main step
            "noisy_ce": jnp.mean(losses),
            "meta_loss": info["F_lookahead"],  # clean CE at the lookahead point
            "lr": lr,
            "meta_grad_norm": jnp.sqrt(bilevel.tree_sq_norm(d_meta)),
            **weight_measurements(weights, noisy_batch, self.axis_name),
        }
        return state, measurements, {**info, "main_weights": weights}
