"""Models: CIFAR ResNets (main model f_w) and the label-correction meta model g_alpha.

Plain flax modules; they import only flax and jax.
"""

from ebomlc_jax.models.meta import BatchStatNorm, MetaNet, meta_from_config
from ebomlc_jax.models.resnet import CifarResNet, from_config, resnet32

__all__ = ["BatchStatNorm", "CifarResNet", "MetaNet", "from_config", "meta_from_config", "resnet32"]
