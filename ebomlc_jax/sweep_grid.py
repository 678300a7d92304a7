"""The families of `ebomlc_jax.sweep`: each a grid of settings (a config file and overrides),
and the methods a family runs (the registered ones, `ce` as its three floors). No JAX here."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence

from ebomlc_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout: run.py, configs/
TABLE_CELLS = ("uniform0", "uniform20", "uniform40", "uniform60", "uniform80", "flip20", "flip40")
FLOORS = {"ce": "both", "ce-noisy": "noisy", "ce-clean": "clean"}  # method.ce.train_on
EBOMLC_ONLY = ("k", "rho", "xi", "variants")  # families that sweep an EBOMLC field


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of a family's grid: a config file (relative to the repository) and overrides."""

    name: str
    config: str
    overrides: tuple[tuple[str, str], ...] = ()


def _swept(stems: Sequence[str], field: str, values: Sequence[str], label: str) -> list[Setting]:
    """The settings of an EBOMLC ablation: every config stem at every value of one field."""
    return [
        Setting(f"{s}-{label}{v}", f"configs/{s}.py", ((f"method.ebomlc.{field}", v),))
        for s in stems
        for v in values
    ]


def _table(dataset: str) -> list[Setting]:
    return [Setting(f"{dataset}_{c}", f"configs/{dataset}_{c}.py") for c in TABLE_CELLS]


UNIFORM_20_40_80 = ("uniform20", "uniform40", "uniform80")
FAMILIES: dict[str, list[Setting]] = {
    "table1": _table("cifar10"),
    "table2": _table("cifar100"),
    # Fig. 7: the text of Section VI-C1 names CIFAR-10 at 20%, 40% and 80% uniform noise (the
    # caption's "20%, 40% and 40%" contradicts its own text's 80% results).
    "k": _swept([f"cifar10_{c}" for c in UNIFORM_20_40_80], "k", ("1", "2", "5"), "k"),
    "rho": _swept(
        [f"{d}_{c}" for d in ("cifar10", "cifar100") for c in UNIFORM_20_40_80],
        "rho",
        ("0.1", "0.2", "0.4", "0.8"),
        "rho",
    ),
    "xi": _swept(["cifar10_uniform40"], "xi", ("0.01", "0.05", "0.5", "1"), "xi"),
    "variants": _swept(
        [f"{d}_{c}" for d in ("cifar10", "cifar100") for c in TABLE_CELLS],
        "variant",
        ("paper", "reference"),
        "",
    ),
    "digits": [
        Setting(
            "digits_uniform60",
            "configs/digits_study.py",
            (("noise.kind", "uniform"), ("noise.rate", "0.6")),
        ),
        Setting(
            "digits_flip40",
            "configs/digits_study.py",
            (("noise.kind", "flip"), ("noise.rate", "0.4")),
        ),
    ],
}
# Families whose default is a subset of their grid (--settings=all runs the whole grid).
DEFAULT_SETTINGS = {
    "variants": tuple(
        f"{d}_{c}-{v}"
        for d in ("cifar10", "cifar100")
        for c in ("uniform40", "uniform80", "flip40")
        for v in ("paper", "reference")
    )
}


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
    """The sweep's method names -> their config overrides: each registered method, and `ce` as
    its three floors."""
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for name in registered:
        if name == "ce":
            out.update({f: (("method.ce.train_on", on),) for f, on in FLOORS.items()})
        else:
            out[name] = ()
    return out


def allowed_methods(family: str, registered: Sequence[str]) -> tuple[str, ...]:
    """The methods a family may run (its default): EBOMLC alone for its ablations."""
    if family in EBOMLC_ONLY:
        return ("ebomlc",)
    return tuple(method_overrides(registered))
