"""Name -> method class registry (config `method.name`)."""

from ebomlc_jax.errors import allowed

REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a method available as `method.name=<name>`."""

    def decorate(cls: type) -> type:
        REGISTRY[name] = cls
        return cls

    return decorate


def get(name: str) -> type:
    """The method class registered as `name`; ConfigError listing the known names otherwise."""
    if name not in REGISTRY:
        raise allowed("method.name", name, sorted(REGISTRY))
    return REGISTRY[name]


def create(name: str, **kwargs):
    """Build the method registered as `name` with its hyperparameters."""
    return get(name)(**kwargs)
