"""Helpers the test modules share: the tiny config with overrides, building a run's pieces,
reading checkpoints back, and the bad-input check (each module lists its own BAD_INPUT)."""

import importlib
import json
import pathlib
import time

import jax
import numpy as np
import pytest
import tiny_config

from ebomlc_jax import checkpoint, epochs, train
from ebomlc_jax.errors import ConfigError

TESTS = pathlib.Path(__file__).resolve().parent


def tiny(overrides=None):
    """tests/tiny_config.py with {"dotted.field": value} overrides."""
    c = tiny_config.get_config()
    for path, value in (overrides or {}).items():
        *parents, last = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[last] = value
    return c


def build(config, seeds=None, **runner):
    """(method, runner) of a config, as train_and_evaluate builds them (one device)."""
    seeds = list(seeds or [config.seed])
    datas = [train.load_data(config, s) for s in seeds]
    spec = train.batch_spec(config, datas[0])
    d = datas[0]
    method = train.build_method(config, d.num_classes, spec.steps_per_epoch, None, d.num_noisy)
    return method, epochs.Runner(method, spec, datas, seeds, **runner)


def checkpoint_epochs(workdir) -> list[int]:
    """Complete checkpoints (orbax renames `<n>.orbax-checkpoint-tmp*` to `<n>` when done)."""
    d = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def fresh_state(config):
    """A freshly initialised state of the config's structure (the `like` of a restore)."""
    return build(config, scan=False)[1].init_state()


def restore(workdir, config):
    """(epoch, state, record) of the newest readable checkpoint, through our Checkpointer."""
    ckpt = checkpoint.Checkpointer(workdir, config.checkpoint.keep, asynchronous=False)
    try:
        return ckpt.restore_latest(fresh_state(config))
    finally:
        ckpt.close()


def flat(state) -> dict[str, np.ndarray]:
    """path -> host array of every leaf; PRNG keys as their raw data."""
    state = checkpoint.to_saveable(state)
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
    }


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]


def no_compute(monkeypatch):
    """Make any start of model building or training fail the test."""

    def started(*args, **kwargs):
        raise AssertionError("compute started before the bad input was reported")

    monkeypatch.setattr(train, "build_method", started)
    monkeypatch.setattr(train.epochs, "Runner", started)


def check_bad_input(overrides, message, tmp_path, monkeypatch):
    """The tiny run with `overrides` stops with a ConfigError matching `message`, before any
    compute and before it writes anything in its workdir."""
    no_compute(monkeypatch)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=message):
        train.train_and_evaluate(tiny(overrides), str(tmp_path))
    assert time.monotonic() - start < 30
    assert not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "config.json").exists()


def case_ids(cases) -> list[str]:
    return ["-".join(f"{k}={v}" for k, v in overrides.items()) for overrides, _ in cases]


def all_bad_input_cases() -> list:
    """The BAD_INPUT lists of every test module (a method's cases live in its own tests)."""
    cases = []
    for path in sorted(TESTS.glob("test_*.py")):
        if "\nBAD_INPUT" in path.read_text():
            cases += importlib.import_module(path.stem).BAD_INPUT
    return cases
