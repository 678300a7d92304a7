"""PMW-Net (Zhao, Shu, Yuan, Liu, Meng, "A Probabilistic Formulation for Meta-Weight-Net", IEEE
TNNLS 34(3), 2023): MW-Net with each weight drawn from a Beta whose parameters two MLPs give.

Released code: xjtushujun/Probabilistic-MW-Net, `cifar/PMWN.py: train` and `cifar/resnet.py:
VNet`. Per step, with l_i = CE(f_w(x_i), y_i) on the noisy batch (n examples), eta_t the main lr:

  q_theta(v_i) = Beta(a_i, b_i), a_i = a_theta(l_i), b_i = b_theta(l_i) (inputs stop_grad l_i;
      a_theta, b_theta: 1-100-1 MLPs with softplus outputs, `vnet_alpha`, `vnet_beta`)
  v_i ~ q_theta(v_i): ONE reparameterised sample per example (paper Sec. III-C1: "one example
      sampling is usually enough"; the code's `Beta(alpha, beta).rsample()`)
  w'(theta) = w - eta_t (1/n) sum_i v_i grad l_i(w)                       (paper Eq. 21)
  J(theta) = CE_clean(w'(theta)) + lambda_t (1/n) sum_i KL(Beta(a_i, b_i) || Beta(a0, b0))
      lambda_t = kl_weight * eta_t (the code's `0.001 * meta_lr * kl_divergence(...).mean()`;
      `kl_times_lr=False`: lambda = kl_weight, the paper's Eq. 26 with lambda = 1e-3)
  theta <- Adam step (lr 1e-3, L2 1e-4) along grad J           (paper Eq. 27, Algorithm 1 step 6)
  w <- momentum-SGD step along (1/n) sum_i v'_i grad l_i(w), v'_i from the UPDATED nets:
      a fresh sample of Beta(a'_i, b'_i) (the code, `main_weights="sample"`) or its mean
      a'_i / (a'_i + b'_i) (paper Eq. 25, `main_weights="mean"`); held constant
  prior for the next step: (a0, b0) = (mean_i a'_i, mean_i b'_i) of this step's batch; the
      first step of every epoch uses Beta(1, 1) (the code: `v_prior = Beta(a.mean(), b.mean())`
      rebinds train()'s argument, so each epoch's call starts from the global Beta(1, 1)).

The paper's Eq. 27 uses q_theta(t)(v_i) itself as the prior, whose KL gradient at theta = theta(t)
is zero, so a one-step update would carry no KL term; the released code's batch-mean prior is
what trains. Sampling: v = G_a / (G_a + G_b) with G ~ Gamma, computed as sigmoid(log G_a -
log G_b); d v / d(a, b) flows through the gamma draws' implicit reparameterisation gradients
(jax.random.loggamma). PyTorch's Beta.rsample differentiates the Beta draw with its own CDF held
fixed instead: another unbiased estimator of the same gradient, with other per-sample values.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import betaln, digamma

from ebomlc_jax import models
from ebomlc_jax.errors import check_bool, check_choice, check_number
from ebomlc_jax.methods import common, mwnet
from ebomlc_jax.methods.registry import register

MAIN_WEIGHTS = ("sample", "mean")


def beta_kl(a: jax.Array, b: jax.Array, a0: jax.Array, b0: jax.Array) -> jax.Array:
    """KL(Beta(a, b) || Beta(a0, b0)) elementwise (torch.distributions' `_kl_beta_beta`)."""
    return (
        betaln(a0, b0)
        - betaln(a, b)
        + (a - a0) * digamma(a)
        + (b - b0) * digamma(b)
        + (a0 - a + b0 - b) * digamma(a + b)
    )


def beta_sample(key: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """v ~ Beta(a, b) as sigmoid(log G_a - log G_b), G ~ Gamma(.), differentiable in (a, b)."""
    k_a, k_b = jax.random.split(key)
    log_a = jax.random.loggamma(k_a, a, dtype=a.dtype)
    log_b = jax.random.loggamma(k_b, b, dtype=b.dtype)
    return jax.nn.sigmoid(log_a - log_b)


def global_beta_sample(
    key: jax.Array, a: jax.Array, b: jax.Array, axis_name: str | None = None
) -> jax.Array:
    """`beta_sample` drawn for the global batch; under pmap each device keeps its own rows, so a
    pmap run draws what a single-device run of the whole batch does (as `GlobalDropout`)."""
    if axis_name is None:
        return beta_sample(key, a, b)
    rows = a.shape[0]
    gather = lambda x: jax.lax.all_gather(x, axis_name, tiled=True)  # noqa: E731
    v = beta_sample(key, gather(a), gather(b))
    return jax.lax.dynamic_slice_in_dim(v, jax.lax.axis_index(axis_name) * rows, rows)


@register("pmwnet")
@dataclasses.dataclass(frozen=True, kw_only=True)
class PMWNet(mwnet.MWNet):
    """PMW-Net. `meta_model` holds both Beta-parameter nets (state "meta"; one Adam over both is
    the code's two Adams with equal settings); the prior of the next step is state["prior"]."""

    kl_weight: float = 1e-3
    kl_times_lr: bool = True
    main_weights: str = "sample"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            **super().default_config(),  # each of vnet_alpha, vnet_beta: VNet(1, 100, 1) with
            #   its own Adam(1e-3, weight_decay=1e-4)
            "kl_weight": 1e-3,  # lambda of Eq. 26 (the code's 0.001)
            "kl_times_lr": True,  # the code also scales the KL term by the current main lr
            #   (0.001 * meta_lr * KL); False: Eq. 26 as written
            "main_weights": "sample",  # sample (the code: a fresh Beta draw) | mean (Eq. 25)
        }

    @classmethod
    def check(cls, hp: Mapping[str, Any]) -> None:
        super().check(hp)
        check_number(cls.field("kl_weight"), hp["kl_weight"], 0, float("inf"), high_open=True)
        check_bool(cls.field("kl_times_lr"), hp["kl_times_lr"])
        check_choice(cls.field("main_weights"), hp["main_weights"], MAIN_WEIGHTS)

    @classmethod
    def variant_of(cls, hp: Mapping[str, Any]) -> str | None:
        return None if hp["main_weights"] == "sample" else hp["main_weights"]

    @classmethod
    def weighting_net(cls, hidden_dim: int, axis_name: str | None) -> nn.Module:
        return models.BetaWeightNet(hidden_dim, axis_name)

    def init(self, rng: jax.Array, sample_images: jax.Array) -> common.State:
        uniform = {"a": jnp.ones((), jnp.float32), "b": jnp.ones((), jnp.float32)}
        return {**super().init(rng, sample_images), "prior": uniform}

    def prior(self, state: common.State) -> tuple[jax.Array, jax.Array]:
        """(a0, b0) of this step: Beta(1, 1) at an epoch's first step, else the stored one."""
        if self.steps_per_epoch:
            first = state["step"] % self.steps_per_epoch == 0
        else:  # the run's shape not given: only the very first step
            first = state["step"] == 0
        return tuple(jnp.where(first, 1.0, state["prior"][k]) for k in ("a", "b"))

    def kl_coefficient(self, lr: jax.Array) -> jax.Array:
        """lambda_t: kl_weight, times the current main lr with kl_times_lr."""
        return self.kl_weight * (lr if self.kl_times_lr else 1.0)

    def weigh(self, state: common.State, lr: jax.Array, key: jax.Array) -> mwnet.Weigh:
        """One Beta draw per example, and lambda_t * mean_i KL(Beta(a_i, b_i) || prior)."""
        net, prior = self.net_fn(), self.prior(state)

        def weigh(theta, losses):
            a, b = net(theta, losses)
            kl = jnp.mean(beta_kl(a, b, *prior))
            return global_beta_sample(key, a, b, self.axis_name), self.kl_coefficient(lr) * kl

        return weigh

    def step_weights(self, state: common.State, losses: jax.Array, key: jax.Array) -> jax.Array:
        """A fresh draw (the code's `w_post.rsample()`) or the mean (Eq. 25) of the updated q."""
        a, b = self.net_fn()(state["meta"]["params"], losses)
        if self.main_weights == "mean":
            return a / (a + b)
        return global_beta_sample(key, a, b, self.axis_name)

    def global_mean(self, x: jax.Array) -> jax.Array:
        """Mean over the batch (over all devices under pmap)."""
        m = jnp.mean(x)
        return m if self.axis_name is None else jax.lax.pmean(m, self.axis_name)

    def _step(self, state, noisy_batch, clean_batch):
        a0, b0 = self.prior(state)
        state, measurements, info = self.reweighting_step(state, noisy_batch, clean_batch)
        a, b = self.net_fn()(state["meta"]["params"], info["losses"])  # the updated nets
        v = info["main_weights"]
        state = {**state, "prior": {"a": self.global_mean(a), "b": self.global_mean(b)}}
        return state, {
            **measurements,
            "kl_term": info["penalty"],  # lambda_t * mean KL at the lookahead
            "prior_a": a0,
            "prior_b": b0,
            "weight_std": jnp.sqrt(
                jnp.maximum(self.global_mean(v**2) - self.global_mean(v) ** 2, 0)
            ),
        }
