"""GLC, the Gold Loss Correction (Hendrycks et al., NeurIPS 2018; mmazeika/glc CIFAR/train_ours.py).

Phase 1 trains on D' alone; C-hat is then read from its softmax on the trusted set D; phase 2
trains the network again from the same initial weights with the forward-corrected loss on D' and
plain cross-entropy on D. Both phases are one run: the step counter says which phase a step is in,
and the epoch-level hook (a pass over D before the first epoch of phase 2) estimates C-hat and
puts the initial network back.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ebomlc_jax import bilevel
from ebomlc_jax.errors import ConfigError, check_number
from ebomlc_jax.methods import common
from ebomlc_jax.methods.registry import register


def estimate_transition(probs: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """C-hat, row i = mean softmax over the trusted examples of class i (get_C_hat_transpose).

    A class with no trusted example gets a row of zeros.
    """
    onehot = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)
    sums = onehot.T @ probs
    counts = jnp.sum(onehot, axis=0)
    return sums / jnp.maximum(counts, 1)[:, None]


def forward_corrected_nll(logits: jax.Array, c_hat: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example -log (softmax(f(x)) C-hat)_y~ (train_phase2's loss_s, before the sum).

    The probability is floored at the dtype's smallest normal number, so a zero gives a finite
    loss and gradient (as `bilevel.mixture_nll` does).
    """
    probs = jax.nn.softmax(logits.astype(jnp.result_type(logits, jnp.float32)))
    p = jnp.sum(probs * c_hat.T[labels], axis=-1)  # sum_k softmax_k C[k, y~]
    return -jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))


@register("glc")
@dataclasses.dataclass(frozen=True, kw_only=True)
class GLC(common.Method):
    """Phase 1: CE on the noisy batch. Phase 2 (a fresh network): (sum of the forward-corrected
    NLL on the noisy batch + sum of CE on the clean batch) / (n + m), as train_phase2.

    Each phase runs the whole learning-rate schedule compressed to its share of the epochs, as
    train_ours.py restarts its schedule for phase 2.
    """

    phase1_fraction: float = 0.5

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "phase1_fraction": 0.5,  # share of num_epochs for phase 1 (rounded to whole epochs);
            #   train_ours.py trains --epochs (75) in each phase, so 0.5
        }

    @classmethod
    def check(cls, hp: Mapping[str, Any]) -> None:
        check_number(
            cls.field("phase1_fraction"), hp["phase1_fraction"], 0, 1, low_open=True, high_open=True
        )

    def __post_init__(self):
        super().__post_init__()
        if self.steps_per_epoch < 1 or not 1 <= self.phase1_epochs < self.num_epochs:
            raise ConfigError(
                f"{self.field('phase1_fraction')}={self.phase1_fraction} with "
                f"num_epochs={self.num_epochs} and steps_per_epoch={self.steps_per_epoch} leaves "
                f"{self.phase1_epochs} epoch(s) to phase 1: glc needs at least one epoch in each "
                "phase (num_epochs >= 2)"
            )

    # -- the two phases
    @property
    def phase1_epochs(self) -> int:
        """Epochs of phase 1 (CE on D'); phase 2 takes the rest."""
        return round(self.phase1_fraction * self.num_epochs)

    @property
    def boundary(self) -> int:
        """The first step of phase 2."""
        return self.phase1_epochs * self.steps_per_epoch

    def phase_lr(self, step: jax.Array) -> jax.Array:
        """The run's schedule stretched over each phase: the lr of step `step`."""
        step = jnp.asarray(step)
        later = step >= self.boundary
        local = jnp.where(later, step - self.boundary, step)
        epochs = jnp.where(later, self.num_epochs - self.phase1_epochs, self.phase1_epochs)
        return self.lr_schedule(local * self.num_epochs // epochs)

    @property
    def main_tx(self) -> optax.GradientTransformation:
        """PyTorch's SGD on `phase_lr`; the optimiser's count is the step counter (never reset)."""
        return common.main_optimizer(self.phase_lr, self.momentum, self.weight_decay)

    # -- state
    def init(self, rng: jax.Array, sample_images: jax.Array) -> common.State:
        """The usual state, the initial network for phase 2 ("init") and C-hat (zeros until
        estimated)."""
        state = super().init(rng, sample_images)
        k = self.main_model.num_classes
        return {
            **state,
            "init": jax.tree.map(jnp.copy, state["main"]),
            "c_hat": jnp.zeros((k, k), jnp.float32),
        }

    # -- the epoch-level hook: C-hat from phase 1's network, then the fresh network
    def epoch_pass(self, epoch: int) -> str | None:
        return "clean" if epoch == self.phase1_epochs else None

    def per_example(self, state: common.State, batch: common.Batch) -> dict[str, jax.Array]:
        """Eval-mode softmax of each trusted example and its label."""
        logits = self.predict(state, batch["image"])
        return {"probs": jax.nn.softmax(logits.astype(jnp.float32)), "label": batch["label"]}

    def begin_epoch(
        self, state: common.State, epoch: jax.Array, outputs: dict[str, jax.Array]
    ) -> common.State:
        """C-hat from the pass over D; the initial parameters and BN statistics back, momentum
        buffer zeroed (the optimiser's count, the step counter, goes on)."""
        c_hat = estimate_transition(outputs["probs"], outputs["label"], state["c_hat"].shape[0])
        trace = common.momentum_buffer(state["main_opt"])
        opt = optax.tree_utils.tree_set(
            state["main_opt"], trace=jax.tree.map(jnp.zeros_like, trace)
        )
        main = jax.tree.map(jnp.copy, state["init"])
        return {**state, "main": main, "main_opt": opt, "c_hat": c_hat}

    # -- the step
    def _step(self, state, noisy_batch, clean_batch):
        _, _, state = self.begin(state, 0)
        apply = self.apply_fn(state)
        axis_name, model = self.axis_name, self.main_model

        def phase1(params):
            logits, _, stats = apply(params, noisy_batch["image"])
            return bilevel.cross_entropy(logits, noisy_batch["label"]), stats

        def phase2(params):
            # Two passes, as train_phase2 (silver, then gold): BN statistics per batch and the
            # running statistics updated by each in turn.
            logits, _, stats = apply(params, noisy_batch["image"])
            corrected = forward_corrected_nll(logits, state["c_hat"], noisy_batch["label"])
            after = common.main_apply(model, jax.lax.stop_gradient(stats), axis_name)
            clean_logits, _, stats = after(params, clean_batch["image"])
            total = jnp.sum(corrected) + jnp.sum(
                bilevel.cross_entropies(clean_logits, clean_batch["label"])
            )
            return total / (corrected.shape[0] + clean_logits.shape[0]), stats

        in_phase2 = state["step"] >= self.boundary
        (loss, stats), grads = jax.lax.cond(
            in_phase2,
            jax.value_and_grad(phase2, has_aux=True),
            jax.value_and_grad(phase1, has_aux=True),
            state["main"]["params"],
        )
        lr = self.phase_lr(state["step"])
        state = self.update_main(state, grads, stats)
        return state, {
            "loss": loss,
            "lr": lr,
            "phase": 1.0 + in_phase2.astype(jnp.float32),
            "c_hat_diagonal_mean": jnp.mean(jnp.diagonal(state["c_hat"])),
        }
