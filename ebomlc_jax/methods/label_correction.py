"""What EBOMLC, MLC-D and MLC share: a meta model g(h(x), y) that writes the soft labels of the
lower loss G (Eq. 3), an upper loss F on the clean batch, and the released code's clean half in G.
"""

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebomlc_jax import bilevel
from ebomlc_jax.errors import ConfigError, check_bool
from ebomlc_jax.methods import common


def lower_loss_fields() -> dict[str, Any]:
    """The config fields of G that every label-correction method has."""
    return {
        "clean_in_lower_loss": True,  # DEVIATES from Eq. 3 (D' only): the released code mixes
        #   the second half of the clean batch into G (weights noisy:half), the first half in F
        "joint_lower_pass": False,  # not in the paper (same numbers up to float rounding): G's
        #   noisy batch and clean half in one ResNet pass, BN statistics per batch
    }


def accepts_segments(model: nn.Module) -> bool:
    """Whether the model's __call__ takes `segments` (one pass over concatenated batches)."""
    return "segments" in inspect.signature(type(model).__call__).parameters


def joint_main_apply(apply: bilevel.MainApply) -> bilevel.JointApply:
    """`apply` (from `common.main_apply`) over two batches in one pass: concatenated, BN
    statistics per batch. The BN update is the first batch's, as `apply` over it alone gives."""

    def joint(params, images: jax.Array, clean_images: jax.Array):
        n, m = images.shape[0], clean_images.shape[0]
        both = jnp.concatenate([images, clean_images])
        logits, features, stats = apply(params, both, (n, m))
        return logits[:n], features[:n], stats, logits[n:]

    return joint


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelCorrection(common.Method):
    """A method with a meta model and the lower loss G; F on the (first half of the) clean batch."""

    clean_in_lower_loss: bool = True
    joint_lower_pass: bool = False  # G's noisy and clean batches in one pass (per-batch BN stats)

    uses_meta: ClassVar[bool] = True

    @classmethod
    def check(cls, hp: Mapping[str, Any]) -> None:
        for name in ("clean_in_lower_loss", "joint_lower_pass"):
            check_bool(cls.field(name), hp.get(name, False))
        if hp.get("joint_lower_pass") and not hp.get("clean_in_lower_loss", True):
            raise ConfigError(
                f"{cls.field('joint_lower_pass')}=True is not allowed with "
                f"{cls.field('clean_in_lower_loss')}=False (there is no clean half in G to "
                "join); allowed values: False"
            )

    @classmethod
    def clean_parts(cls, hp: Mapping[str, Any]) -> int:
        return 2 if hp.get("clean_in_lower_loss", True) else 1

    def __post_init__(self):
        super().__post_init__()
        if self.joint_lower_pass and not accepts_segments(self.main_model):
            raise ConfigError(
                f"{self.field('joint_lower_pass')}=True needs a main model whose __call__ takes "
                f"`segments` (CifarResNet does); {type(self.main_model).__name__} does not. "
                "Allowed: False"
            )

    def meta_fn(self, key: jax.Array | None) -> bilevel.MetaFn:
        """The training-mode meta model with dropout key `key` (None: off), batch-statistics BN."""
        model, axis_name = self.meta_model, self.axis_name

        def fn(params, features: jax.Array, labels: jax.Array) -> jax.Array:
            return model.apply(
                {"params": common.reduce_grad(params, axis_name)},
                features,
                labels,
                deterministic=key is None,
                rngs={} if key is None else {"dropout": key},
            )

        return fn

    def objectives(
        self,
        state: common.State,
        noisy_batch: common.Batch,
        clean_batch: common.Batch,
        lower_keys: list[jax.Array],
        upper_key: jax.Array | None = None,
        rho: float = 1.0,
        mixture=bilevel.mixture_nll,
    ) -> tuple[bilevel.Objective, list[bilevel.Objective]]:
        """F on the (first half of the) clean batch and one G per dropout key in `lower_keys`.

        F mixes in the meta model (Eq. 9, its own dropout key) when `upper_key` is given, else
        it is the plain CE of Eq. 2. G holds the second clean half when clean_in_lower_loss,
        passed through the network together with the noisy batch when joint_lower_pass.
        """
        apply = self.apply_fn(state)
        joint = joint_main_apply(apply) if self.joint_lower_pass else None
        if self.clean_in_lower_loss:
            upper_batch, lower_clean = common.split_clean_batch(clean_batch)
        else:
            upper_batch, lower_clean = clean_batch, None
        upper_meta = None if upper_key is None else self.meta_fn(upper_key)
        upper = bilevel.upper_objective(upper_batch, apply, upper_meta, rho, mixture)
        lowers = [
            bilevel.lower_objective(noisy_batch, apply, self.meta_fn(k), lower_clean, joint)
            for k in lower_keys
        ]
        return upper, lowers
