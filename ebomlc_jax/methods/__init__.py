"""Training methods, registered by name: `create("ebomlc", main_model=..., ...)`."""

from ebomlc_jax.methods import ce, ebomlc, mlc, mlc_d  # noqa: F401  (registers them)
from ebomlc_jax.methods.common import Method, State, main_optimizer, meta_optimizer
from ebomlc_jax.methods.registry import REGISTRY, create, get, register

__all__ = [
    "REGISTRY",
    "Method",
    "State",
    "create",
    "get",
    "main_optimizer",
    "meta_optimizer",
    "register",
]
