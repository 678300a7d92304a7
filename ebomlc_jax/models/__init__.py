"""Models: CIFAR ResNets (main model f_w) and the label-correction meta model g_alpha."""

from ebomlc_jax.models.meta import BatchStatNorm, MetaNet
from ebomlc_jax.models.resnet import CifarResNet, resnet32

__all__ = ["BatchStatNorm", "CifarResNet", "MetaNet", "resnet32"]
