"""The families of `ebomlc_jax.sweep` (defined in configs/sweeps.py) as settings, and the methods
a family runs (the registered ones, aliases in their place). No JAX here."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence

from ebomlc_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout: run.py, configs/


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of a family's grid: a config file (relative to the repository) and overrides."""

    name: str
    config: str
    overrides: tuple[tuple[str, str], ...] = ()


def _load_families():
    """configs/sweeps.py, the families' definitions (loaded by path: configs/ is not a package
    of the library)."""
    spec = importlib.util.spec_from_file_location("sweep_families", REPO / "configs" / "sweeps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_DEFINED = _load_families()
FAMILIES: dict[str, list[Setting]] = {
    name: [Setting(n, c, tuple(o)) for n, c, o in grid] for name, grid in _DEFINED.FAMILIES.items()
}
DEFAULT_SETTINGS: dict[str, tuple[str, ...]] = _DEFINED.DEFAULT_SETTINGS
METHOD_ALIASES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = _DEFINED.METHOD_ALIASES
SINGLE_METHOD: dict[str, str] = _DEFINED.SINGLE_METHOD


def registered_name(method: str) -> str:
    """The registered method a sweep's method name runs (an alias's target, else itself)."""
    return METHOD_ALIASES[method][0] if method in METHOD_ALIASES else method


@functools.cache
def registered_methods() -> tuple[str, ...]:
    """`ebomlc_jax.methods.REGISTRY`'s names, read in a subprocess so this one never imports JAX."""
    code = (
        "import json; from ebomlc_jax.methods import REGISTRY; print(json.dumps(sorted(REGISTRY)))"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"cannot read the registered methods: {tail[0]}")
    return tuple(json.loads(proc.stdout.splitlines()[-1]))


def method_overrides(registered: Sequence[str]) -> dict[str, tuple[tuple[str, str], ...]]:
    """The sweep's method names -> their config overrides: each registered method, or in its
    place its aliases (ce: its three floors)."""
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for name in registered:
        aliases = {a: o for a, (target, o) in METHOD_ALIASES.items() if target == name}
        out.update(aliases or {name: ()})
    return out


def allowed_methods(family: str, registered: Sequence[str]) -> tuple[str, ...]:
    """The methods a family may run (its default): its one method for a method's ablation."""
    if family in SINGLE_METHOD:
        return (SINGLE_METHOD[family],)
    return tuple(method_overrides(registered))
