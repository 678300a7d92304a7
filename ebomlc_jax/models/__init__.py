"""Models: CIFAR ResNets (main model f_w) and the label-correction meta model g_alpha.

Plain flax modules; they import only flax and jax.
"""

from ebomlc_jax.models.meta import BatchStatNorm, MetaNet, meta_from_config
from ebomlc_jax.models.resnet import CifarResNet, from_config, resnet32
from ebomlc_jax.models.weighting import BetaWeightNet, WeightNet

__all__ = [
    "BatchStatNorm",
    "BetaWeightNet",
    "CifarResNet",
    "MetaNet",
    "WeightNet",
    "from_config",
    "meta_from_config",
    "resnet32",
]
