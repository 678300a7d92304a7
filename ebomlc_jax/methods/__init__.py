"""Training methods, registered by name: `create("ebomlc", main_model=..., ...)`.

One module per method; the interface is described in `methods/common.py`. Registering a method
is one line below.
"""

from ebomlc_jax.methods import (  # noqa: F401  (importing a method's module registers it)
    ce,
    coteaching_plus,
    dividemix,
    ebomlc,
    glc,
    l2rw,
    mlc,
    mlc_d,
    mwnet,
    pmwnet,
)
from ebomlc_jax.methods.common import Method, State, main_optimizer, meta_optimizer
from ebomlc_jax.methods.registry import REGISTRY, config, create, from_config, get, register

__all__ = [
    "REGISTRY",
    "Method",
    "State",
    "config",
    "create",
    "from_config",
    "get",
    "main_optimizer",
    "meta_optimizer",
    "register",
]
