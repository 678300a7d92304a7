"""Config validation before any compute: each message names the field and the allowed values."""

from __future__ import annotations

import numbers

import ml_collections

from ebomlc_jax import epochs, methods, parallel
from ebomlc_jax.data import DATASETS, NOISE_KINDS
from ebomlc_jax.errors import allowed
from ebomlc_jax.methods.ebomlc import VARIANTS

DTYPES = ("float32", "bfloat16")


def _number(field: str, value, low, high, *, low_open=False, high_open=False, integer=False):
    """value must be a (integer) number in the interval; the message writes the interval."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(
        value, bool
    )
    if not ok_type:
        raise allowed(field, value, f"{kind} in {interval}")
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise allowed(field, value, f"{kind} in {interval}")


def _choice(field: str, value, choices):
    if value not in choices:
        raise allowed(field, value, choices)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for the first field outside what the run can do."""
    inf = float("inf")
    c = config
    _choice("method.name", c.method.name, tuple(sorted(methods.REGISTRY)))
    _choice("method.variant", c.method.variant, VARIANTS)
    _number("method.rho", c.method.rho, 0, 1, low_open=True)
    _number("method.xi", c.method.xi, 0, 1, low_open=True, high_open=True)
    _number("method.delta", c.method.delta, 0, inf, low_open=True, high_open=True)
    _number("method.mlcd_delta", c.method.mlcd_delta, 0, inf, low_open=True, high_open=True)
    _number("method.k", c.method.k, 1, inf, integer=True, high_open=True)

    _choice("noise.kind", c.noise.kind, NOISE_KINDS)
    _number("noise.rate", c.noise.rate, 0, 1)

    _choice("data.dataset", c.data.dataset, DATASETS)
    _number("data.clean_fraction", c.data.clean_fraction, 0, 1, low_open=True, high_open=True)
    _number("data.batch_size", c.data.batch_size, 1, inf, integer=True, high_open=True)
    _number("data.clean_batch_size", c.data.clean_batch_size, 1, inf, integer=True, high_open=True)
    halves = c.data.clean_in_lower_loss and c.method.name != "ce"
    if halves and c.data.clean_batch_size % 2:
        raise allowed(
            "data.clean_batch_size",
            c.data.clean_batch_size,
            "an even integer when data.clean_in_lower_loss=True (split in halves)",
        )
    if c.method.joint_lower_pass and not halves:
        raise allowed(
            "method.joint_lower_pass",
            c.method.joint_lower_pass,
            "False unless data.clean_in_lower_loss=True and method.name != 'ce' (there is no "
            "clean half in G to join)",
        )
    _number("data.augment_pad", c.data.augment_pad, 0, inf, integer=True, high_open=True)
    _choice("data.input", c.data.input, epochs.INPUTS)

    _number("num_epochs", c.num_epochs, 1, inf, integer=True, high_open=True)
    _number("steps_per_epoch", c.steps_per_epoch, 0, inf, integer=True, high_open=True)
    _number("num_parallel_seeds", c.num_parallel_seeds, 1, inf, integer=True, high_open=True)
    _number("seed", c.seed, 0, 2**31 - 1, integer=True)
    _number("optim.lr", c.optim.lr, 0, inf, low_open=True, high_open=True)
    _number("optim.momentum", c.optim.momentum, 0, 1, high_open=True)
    _number("optim.weight_decay", c.optim.weight_decay, 0, inf, high_open=True)
    _number("optim.meta_lr", c.optim.meta_lr, 0, inf, low_open=True, high_open=True)
    _number("optim.decay_factor", c.optim.decay_factor, 0, inf, low_open=True, high_open=True)
    for epoch in c.optim.decay_epochs:
        _number("optim.decay_epochs", epoch, 0, c.num_epochs, integer=True)

    _choice("model.dtype", c.model.dtype, DTYPES)
    _number(
        "model.blocks_per_stage", c.model.blocks_per_stage, 1, inf, integer=True, high_open=True
    )
    _number("model.meta_dropout", c.model.meta_dropout, 0, 1, high_open=True)
    if not c.model.widths or any(not isinstance(w, int) or w < 1 for w in c.model.widths):
        raise allowed("model.widths", c.model.widths, "a non-empty tuple of positive integers")

    _number("eval.batch_size", c.eval.batch_size, 1, inf, integer=True, high_open=True)
    _number("checkpoint.keep", c.checkpoint.keep, 1, inf, integer=True, high_open=True)
    _number("log_every_steps", c.log_every_steps, 1, inf, integer=True, high_open=True)
    _choice("parallel.mode", c.parallel.mode, parallel.MODES)
    _choice("parallel.seeds", c.parallel.seeds, parallel.SEED_MODES)
    _number("parallel.num_devices", c.parallel.num_devices, 0, inf, integer=True, high_open=True)
    epochs.check_parallel_seeds(c.num_parallel_seeds, c.data.input, c.parallel.mode)
