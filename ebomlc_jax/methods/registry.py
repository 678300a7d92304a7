"""Name -> method class registry (`config.method.name`) and the run config's method block."""

from typing import Any

from ebomlc_jax.errors import allowed
from ebomlc_jax.methods.common import placeholder

REGISTRY: dict[str, type] = {}
DEFAULT = "ebomlc"  # the paper's method


def register(name: str):
    """Class decorator: make a method available as `method.name=<name>`."""

    def decorate(cls: type) -> type:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return decorate


def get(name: str) -> type:
    """The method class registered as `name`; ConfigError listing the known names otherwise."""
    if name not in REGISTRY:
        raise allowed("method.name", name, tuple(sorted(REGISTRY)))
    return REGISTRY[name]


def create(name: str, **kwargs):
    """Build the method registered as `name` with its hyperparameters."""
    return get(name)(**kwargs)


def config() -> Any:
    """`config.method` (an ml_collections.ConfigDict): the method's name and one block per
    registered method, `method.<name>`, from its `default_config()`."""
    import ml_collections  # only where configs are built: the benchmarks run without it
    from ml_collections import config_dict

    def field(value):
        return config_dict.placeholder(value.type) if isinstance(value, placeholder) else value

    c = ml_collections.ConfigDict()
    c.name = DEFAULT  # which method to train: one of the blocks below
    for name in sorted(REGISTRY):
        block = REGISTRY[name].default_config()
        c[name] = ml_collections.ConfigDict({k: field(v) for k, v in block.items()})
    return c


def from_config(config: Any, **built):
    """The method named by `config.method.name`, built from the run config (`Method.from_config`
    keywords: main_model, num_classes, steps_per_epoch, axis_name, num_noisy)."""
    return get(config.method.name).from_config(config, **built)
