"""Every check of a run's input, before any compute: each message names the field and the allowed
values. `validate(config)` checks the config alone (the method's own fields through its `check`);
`check_data(config, data)` what needs the loaded data. Device counts are chosen, not checked, by
`parallel.choose_device_count`.
"""

from __future__ import annotations

import importlib.util

import ml_collections

from ebomlc_jax import methods, parallel
from ebomlc_jax.data import DATASETS, INPUTS, NOISE_KINDS
from ebomlc_jax.data.pipeline import NoisyLabelData, check_batch_size
from ebomlc_jax.errors import ConfigError, allowed, check_bool, check_choice, check_number

DTYPES = ("float32", "bfloat16")
TENSORFLOW = ("tensorflow", "tensorflow_datasets")  # for CIFAR (tfds) and data.input=tf_data
INF = float("inf")
BOOLS = (
    "data.download",
    "data.augment",
    "data.scan_epochs",
    "noise.uniform_includes_true_class",
    "model.meta_batch_norm",
    "eval.meta_correction",
    "checkpoint.asynchronous",
    "parallel.distributed",
    "figures",
    "resume_with_changed_config",
)


def positive_int(field: str, value) -> None:
    """An integer >= 1."""
    check_number(field, value, 1, INF, integer=True, high_open=True)


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for the first field outside what the run can do."""
    c = config
    method = methods.get(c.method.name)
    hp = method.hyperparameters(c)
    method.check(hp)

    check_choice("noise.kind", c.noise.kind, NOISE_KINDS)
    check_number("noise.rate", c.noise.rate, 0, 1)

    check_choice("data.dataset", c.data.dataset, DATASETS)
    check_number("data.clean_fraction", c.data.clean_fraction, 0, 1, low_open=True, high_open=True)
    positive_int("data.batch_size", c.data.batch_size)
    positive_int("data.clean_batch_size", c.data.clean_batch_size)
    parts = method.clean_parts(hp)
    if c.data.clean_batch_size % parts:
        raise allowed(
            "data.clean_batch_size",
            c.data.clean_batch_size,
            f"multiples of {parts} ({method.name} splits each clean batch in {parts} parts)",
        )
    check_number("data.augment_pad", c.data.augment_pad, 0, INF, integer=True, high_open=True)
    check_choice("data.input", c.data.input, INPUTS)
    if c.data.dataset != "digits" or c.data.input == "tf_data":
        missing = [m for m in TENSORFLOW if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"data.dataset={c.data.dataset!r} with data.input={c.data.input!r} needs "
                f"{' and '.join(missing)}, not installed: pip install 'ebomlc_jax[cifar]' "
                "(or -r requirements.txt); allowed without them: data.dataset='digits' with "
                "data.input 'device' or 'host'"
            )

    positive_int("num_epochs", c.num_epochs)
    check_number("steps_per_epoch", c.steps_per_epoch, 0, INF, integer=True, high_open=True)
    positive_int("num_parallel_seeds", c.num_parallel_seeds)
    check_number("seed", c.seed, 0, 2**31 - 1, integer=True)
    check_number("optim.lr", c.optim.lr, 0, INF, low_open=True, high_open=True)
    check_number("optim.momentum", c.optim.momentum, 0, 1, high_open=True)
    check_number("optim.weight_decay", c.optim.weight_decay, 0, INF, high_open=True)
    check_number("optim.meta_lr", c.optim.meta_lr, 0, INF, low_open=True, high_open=True)
    check_number("optim.decay_factor", c.optim.decay_factor, 0, INF, low_open=True, high_open=True)
    for fraction in c.optim.decay_at:
        check_number("optim.decay_at", fraction, 0, 1, low_open=True)

    check_choice("model.dtype", c.model.dtype, DTYPES)
    positive_int("model.blocks_per_stage", c.model.blocks_per_stage)
    if not c.model.widths or any(
        isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in c.model.widths
    ):
        raise allowed("model.widths", c.model.widths, "a non-empty tuple of positive integers")
    positive_int("model.meta_embed_dim", c.model.meta_embed_dim)
    positive_int("model.meta_hidden_dim", c.model.meta_hidden_dim)
    check_number("model.meta_dropout", c.model.meta_dropout, 0, 1, high_open=True)

    positive_int("eval.batch_size", c.eval.batch_size)
    positive_int("checkpoint.keep", c.checkpoint.keep)
    positive_int("log_every_steps", c.log_every_steps)
    check_choice("parallel.mode", c.parallel.mode, parallel.MODES)
    check_choice("parallel.seeds", c.parallel.seeds, parallel.SEED_MODES)
    check_number("parallel.num_devices", c.parallel.num_devices, 0, INF, integer=True)
    for field in BOOLS:
        check_bool(field, _get(c, field))
    if c.num_parallel_seeds > 1 and (c.data.input != "device" or c.parallel.mode != "jit"):
        raise ConfigError(
            f"num_parallel_seeds={c.num_parallel_seeds} needs data.input='device' and "
            f"parallel.mode='jit' (got {c.data.input!r}, {c.parallel.mode!r})"
        )
    if c.num_parallel_seeds > 1 and c.parallel.num_devices > 1:
        raise allowed(
            "parallel.num_devices",
            c.parallel.num_devices,
            f"0 or 1 with num_parallel_seeds={c.num_parallel_seeds} (parallel seeds run on one "
            "device)",
        )


def check_data(config: ml_collections.ConfigDict, data: NoisyLabelData) -> None:
    """The checks that need the loaded data: batches no larger than their sets."""
    check_batch_size(config.data.batch_size, data.num_noisy, "data.batch_size")
    check_batch_size(config.data.clean_batch_size, data.num_clean, "data.clean_batch_size")
