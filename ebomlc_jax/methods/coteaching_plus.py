"""Co-teaching+ (Yu et al., ICML 2019; xingruiyu/coteaching_plus): two networks, each trained on
the small-loss examples its peer picks among the examples whose predictions disagree.

Schedule and selection follow the released `main.py` (`gen_forget_rate`, `train`, `init_epoch`)
and `loss.py` (`loss_coteaching`, `loss_coteaching_plus`); docs/methods/coteaching_plus.md lists
every deviation.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ebomlc_jax import bilevel
from ebomlc_jax.errors import ConfigError, check_number
from ebomlc_jax.methods import common
from ebomlc_jax.methods.registry import register

# main.py: `init_epoch` per dataset (epochs of plain Co-teaching); digits takes MNIST's.
INIT_EPOCH = {"cifar10": 20, "cifar100": 5, "digits": 0}
# loss_coteaching_plus: with no disagreement, both networks take the whole batch's CE while the
# code's `step` (its epoch times the batch's index in the epoch) is below this, else no loss.
AGREEMENT_CE_STEPS = 5000


def forget_rates(tau: float, num_gradual: int) -> np.ndarray:
    """Forget rate at the code's epochs 0..num_gradual: `gen_forget_rate('type_1')`, the
    linspace(0, tau, num_gradual) ramp, then tau (the paper's 1 - R(T) with T_k = num_gradual)."""
    return np.append(np.linspace(0.0, tau, num_gradual), tau)


def remember_counts(tau: float, num_gradual: int, size: int) -> np.ndarray:
    """[num_gradual + 1, size + 1] int32: `int((1 - forget_rate) * n)` of loss_coteaching for each
    schedule row and candidate count n, in float64 as the code computes it."""
    remember = 1.0 - forget_rates(tau, num_gradual)
    return np.floor(remember[:, None] * np.arange(size + 1)[None, :]).astype(np.int32)


def small_loss_mask(loss: jax.Array, candidates: jax.Array, count: jax.Array) -> jax.Array:
    """The `count` smallest losses among `candidates` (the head of loss_coteaching's argsort;
    ties by position); count <= the number of candidates."""
    order = jnp.argsort(jnp.where(candidates, loss, jnp.inf), stable=True)
    ranks = jnp.zeros_like(order).at[order].set(jnp.arange(loss.shape[0], dtype=order.dtype))
    return candidates & (ranks < count)


def select(
    loss1: jax.Array,
    loss2: jax.Array,
    disagree: jax.Array,
    counts: jax.Array,
    warmup: jax.Array,
    agreement_ce: jax.Array,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Each network's selection (masks over the batch) and what it was chosen from.

    Warm-up (loss_coteaching on the batch): the small-loss `counts[n]` of all n examples.
    Co-teaching+ (loss_coteaching_plus): the same among the d disagreeing examples; with d = 0,
    all examples while `agreement_ce`, else none. A count of 0 keeps all candidates (the code's
    `if len(ind_1_update) == 0`). `counts` is one row of `remember_counts`.
    """
    warmup, agreement_ce = jnp.asarray(warmup), jnp.asarray(agreement_ce)
    d = jnp.sum(disagree)
    candidates = jnp.where(warmup | (d == 0), jnp.ones_like(disagree), disagree)
    size = jnp.sum(candidates)
    count = counts[size]
    count = jnp.where(count == 0, size, count)
    agreed = ~warmup & (d == 0)  # loss_coteaching_plus's `else` branch
    count = jnp.where(agreed, jnp.where(agreement_ce, size, 0), count)
    mask1 = small_loss_mask(loss1, candidates, count)
    mask2 = small_loss_mask(loss2, candidates, count)
    return mask1, mask2, {"candidates": size, "selected": count, "disagree": d}


@register("coteaching_plus")
@dataclasses.dataclass(frozen=True, kw_only=True)
class CoteachingPlus(common.Method):
    """Networks "main" (the code's model1, evaluated) and "peer" (model2, its own init and SGD
    state). Each step both see the noisy and clean batches in one training-mode pass; each ranks
    the candidates of `select` by its own CE on the noisy labels, and the other network takes
    the average of two means: its CE over that selection and its CE over the clean batch.
    """

    forget_rate: float | None = None  # tau; None: the run's noise.rate (from_config)
    num_gradual: int = 10
    init_epoch: int = 20

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "forget_rate": common.placeholder(float),  # tau; None: the run's noise.rate, as the
            #   code's `forget_rate = args.noise_rate` (for symmetric and pair noise alike)
            "num_gradual": 10,  # T_k: epochs of the linear forget-rate ramp (code default, E_k)
            "init_epoch": common.placeholder(int),  # plain Co-teaching before this (code)
            #   epoch; None: the code's value per dataset: cifar10 20, cifar100 5, digits 0
            #   (its MNIST value)
        }

    @classmethod
    def hyperparameters(cls, config: common.Config) -> dict[str, Any]:
        hp = super().hyperparameters(config)
        if hp["init_epoch"] is None:
            hp["init_epoch"] = INIT_EPOCH[config.data.dataset]
        return hp

    @classmethod
    def check(cls, hp: Mapping[str, Any]) -> None:
        if hp["forget_rate"] is not None:
            check_number(cls.field("forget_rate"), hp["forget_rate"], 0, 1)
        check_number(cls.field("num_gradual"), hp["num_gradual"], 0, float("inf"), integer=True)
        check_number(cls.field("init_epoch"), hp["init_epoch"], 0, float("inf"), integer=True)

    @classmethod
    def from_config(cls, config: common.Config, **built) -> "CoteachingPlus":
        """`Method.from_config`, with forget_rate None made the run's noise.rate."""
        method = super().from_config(config, **built)
        if method.forget_rate is None:
            method = dataclasses.replace(method, forget_rate=float(config.noise.rate))
        return method

    def __post_init__(self):
        super().__post_init__()
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"{self.field('init_epoch')} and {self.field('num_gradual')} count epochs: "
                f"{type(self).__name__} needs steps_per_epoch >= 1 (got {self.steps_per_epoch})"
            )

    @property
    def tau(self) -> float:
        """The forget rate the schedule ramps to."""
        if self.forget_rate is None:
            raise ConfigError(
                f"{self.field('forget_rate')}=None means the run's noise.rate, which only "
                "from_config knows; give a number in [0, 1] when building the method directly"
            )
        return float(self.forget_rate)

    def init(self, rng: jax.Array, sample_images: jax.Array) -> common.State:
        state = super().init(rng, sample_images)
        peer = common.init_network(self.main_model, jax.random.fold_in(rng, 1), sample_images)
        return {**state, "peer": peer, "peer_opt": self.main_tx.init(peer["params"])}

    def _global(self, x: jax.Array) -> jax.Array:
        """The global batch's values of a per-example array (pmap: every device's, in order)."""
        return x if self.axis_name is None else jax.lax.all_gather(x, self.axis_name, tiled=True)

    def _local(self, x: jax.Array, n: int) -> jax.Array:
        """This device's `n` rows of a global-batch array."""
        if self.axis_name is None:
            return x
        return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(self.axis_name) * n, n)

    def _step(self, state, noisy_batch, clean_batch):
        lr, _, state = self.begin(state, 0)
        epoch = state["step"] // self.steps_per_epoch + 1  # main.py trains epochs 1, 2, ...
        code_step = epoch * (state["step"] % self.steps_per_epoch)  # its `epoch * i`
        warmup = epoch < self.init_epoch
        row = jnp.minimum(epoch, self.num_gradual)  # of the forget-rate schedule
        n = noisy_batch["label"].shape[0]
        labels = noisy_batch["label"]
        images = jnp.concatenate([noisy_batch["image"], clean_batch["image"]])
        applies = (self.apply_fn(state, "main"), self.apply_fn(state, "peer"))

        def objective(params):
            outs = [apply(p, images) for apply, p in zip(applies, params, strict=True)]
            losses = [bilevel.cross_entropies(logits[:n], labels) for logits, _, _ in outs]
            fixed = [self._global(jax.lax.stop_gradient(x)) for x in losses]
            preds = [self._global(jnp.argmax(logits[:n], -1)) for logits, _, _ in outs]
            size = fixed[0].shape[0]
            counts = jnp.asarray(remember_counts(self.tau, self.num_gradual, size))
            agreement_ce = code_step < AGREEMENT_CE_STEPS
            mask1, mask2, info = select(
                *fixed, preds[0] != preds[1], counts[row], warmup, agreement_ce
            )
            scale = size // n  # pmap: cotangents are averaged over the devices
            terms = []
            teachers = (mask2, mask1)  # the swap: each network learns from its peer's pick
            for (logits, _, _), loss, teacher in zip(outs, losses, teachers, strict=True):
                chosen = self._local(teacher, n).astype(loss.dtype)
                noisy = scale * jnp.sum(chosen * loss) / jnp.maximum(jnp.sum(teacher), 1)
                clean = bilevel.cross_entropy(logits[n:], clean_batch["label"])
                terms.append((noisy + clean) / 2)  # `ce` (train_on=both) when all are picked
            stats = tuple(s for _, _, s in outs)
            return terms[0] + terms[1], (terms, stats, (mask1, mask2, info))

        params = (state["main"]["params"], state["peer"]["params"])
        grads, (terms, stats, (mask1, mask2, info)) = jax.grad(objective, has_aux=True)(params)
        state = self.update_main(state, grads[0], stats[0])
        peer, peer_opt = common.sgd_update(
            self.main_tx, state["peer"], state["peer_opt"], grads[1], stats[1]
        )
        state = {**state, "peer": peer, "peer_opt": peer_opt}
        selected = info["selected"].astype(jnp.float32)
        measurements = {
            "loss": terms[0],
            "loss_net2": terms[1],
            "lr": lr,
            "warmup": warmup.astype(jnp.float32),
            "forget_rate": jnp.asarray(forget_rates(self.tau, self.num_gradual), jnp.float32)[row],
            "disagreements": info["disagree"].astype(jnp.float32),
            "selected": selected,
            "kept_fraction": selected / jnp.maximum(info["candidates"], 1),
        }
        if "true_label" in noisy_batch:  # analysis only
            wrong = self._global(noisy_batch["label"] != noisy_batch["true_label"])
            for name, mask in (("net1", mask1), ("net2", mask2)):
                share = jnp.sum(mask & wrong) / jnp.maximum(jnp.sum(mask), 1)
                measurements[f"mislabelled_in_selection_{name}"] = share.astype(jnp.float32)
        return state, measurements

    def extra_predictions(self, state, images):
        """The second network's accuracy (main.py's `evaluate` reports both networks)."""
        return {"net2": self.forward(state, images, "peer")[0]}
