"""Loss-to-weight networks: MW-Net's V(l; theta) and PMW-Net's Beta-parameter networks.

Plain flax modules over a vector of per-example losses [n] (the callers stop their gradient).
"""

import flax.linen as nn
import jax

from ebomlc_jax.models.resnet import torch_linear_bias

# PyTorch's default nn.Linear weight init, kaiming_uniform(a=sqrt 5) = U(-1/sqrt(fan_in), ...).
torch_linear_kernel = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

OUTPUTS = {"sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus}


class WeightNet(nn.Module):
    """l -> Linear(1, hidden), ReLU, Linear(hidden, 1), `output`: meta-weight-net's `VNet`.

    `output="sigmoid"` is MW-Net's weight in (0, 1) (resnet.py of xjtushujun/meta-weight-net);
    "softplus" is one of PMW-Net's positive Beta parameters (cifar/resnet.py of
    xjtushujun/Probabilistic-MW-Net). PyTorch's default Linear init, as both codes leave it.
    """

    hidden_dim: int = 100
    output: str = "sigmoid"
    axis_name: str | None = None  # the method's pmap axis (no collectives here: per example)

    @nn.compact
    def __call__(self, losses: jax.Array) -> jax.Array:
        x = losses[:, None]
        for name, (fan_in, features) in {
            "fc1": (1, self.hidden_dim),
            "fc2": (self.hidden_dim, 1),
        }.items():
            x = nn.Dense(
                features,
                kernel_init=torch_linear_kernel,
                bias_init=torch_linear_bias(fan_in),
                name=name,
            )(x)
            x = jax.nn.relu(x) if name == "fc1" else x
        return OUTPUTS[self.output](x[:, 0])


class BetaWeightNet(nn.Module):
    """l -> (a(l), b(l)): two softplus `WeightNet`s, PMW-Net's `vnet_alpha` and `vnet_beta`."""

    hidden_dim: int = 100
    axis_name: str | None = None  # as WeightNet's

    @nn.compact
    def __call__(self, losses: jax.Array) -> tuple[jax.Array, jax.Array]:
        net = lambda name: WeightNet(self.hidden_dim, "softplus", name=name)  # noqa: E731
        return net("alpha")(losses), net("beta")(losses)
