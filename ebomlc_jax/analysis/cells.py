"""Runs grouped into table cells: (dataset, row, setting) over seeds, by summary.json and config
(never by directory names). Runs of one method and variant whose configs differ in fields that
change what they compute (an ablation's rho, a shorter protocol) become rows of their own."""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ebomlc_jax.analysis import runs as runs_lib
from ebomlc_jax.analysis.paper import METHOD_ORDER, METRIC, Setting, row_name, setting_of


@dataclasses.dataclass(frozen=True)
class Cell:
    """Seed statistics of one (method, setting): accuracies in percent."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        """Number of seeds."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Mean over seeds."""
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (ddof=1); 0 for a single seed."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0


# ---------------------------------------------------------------------------------------------
# Runs below a root, grouped by summary and config.

# Config fields that do not change what a run computes (train.SETUP_ONLY and more: how it is fed,
# parallelised, checkpointed and evaluated); a field is ignored with everything below it.
IGNORED_FIELDS = (
    "seed",
    "num_parallel_seeds",
    "noise.kind",
    "noise.rate",
    "data.dataset",
    "data.download",
    "data.data_dir",
    "data.input",
    "data.scan_epochs",
    "parallel",
    "checkpoint",
    "eval",
    "log_every_steps",
    "figures",
    "resume_with_changed_config",
)
# Variant order inside a method (None: the method's default, no variant in its name).
VARIANT_ORDER = {"ce": (None, "noisy", "clean"), "ebomlc": ("paper", "reference")}
_ABSENT = "<absent>"


def _hashable(value: Any) -> Any:
    """A config value usable as part of a dict key (lists become tuples)."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {"dotted.field": value}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = _hashable(value)
    return out


def is_ignored(field: str) -> bool:
    """Whether a dotted field is, or lies below, one of IGNORED_FIELDS."""
    return any(field == f or field.startswith(f + ".") for f in IGNORED_FIELDS)


def experiment_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The run's config as dotted fields that define the experiment: without IGNORED_FIELDS (the
    seed, the setting, setup), method.name and the blocks of the other methods."""
    own = f"method.{summary.get('method')}."
    return {
        field: value
        for field, value in flatten(summary.get("config") or {}).items()
        if not is_ignored(field) and (not field.startswith("method.") or field.startswith(own))
    }


def value_text(value: Any) -> str:
    """A config value as it appears in a row or figure name."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_label(field: str, value: Any) -> str:
    """'rho=0.4' for a method's own field, 'num_epochs=12' for the rest."""
    name = field.rsplit(".", 1)[-1] if field.startswith("method.") else field
    return f"{name}={value_text(value)}"


def differences(fields: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """Labels of the fields whose value in `fields` differs from `other`'s, in field order."""
    return [
        field_label(f, fields.get(f, _ABSENT))
        for f in sorted(set(fields) | set(other))
        if fields.get(f, _ABSENT) != other.get(f, _ABSENT)
    ]


def method_of(row: str) -> str:
    """The method part of a row name ('ebomlc' of 'ebomlc/paper (rho=0.4)')."""
    return re.split(r"[/ ]", row, maxsplit=1)[0]


def row_order(row: str) -> tuple[Any, ...]:
    """Sort key: METHOD_ORDER, then VARIANT_ORDER, the main config before its config-split rows."""
    base, _, suffix = row.partition(" (")
    method, _, variant = base.partition("/")
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    order = VARIANT_ORDER.get(method, (None,))
    v = order.index(variant or None) if (variant or None) in order else len(order)
    return rank, method, v, variant, bool(suffix), row


@dataclasses.dataclass(frozen=True)
class Entry:
    """One finished run as the tables see it; `accuracy` is the table's metric in % (by default
    test_accuracy_at_best_clean)."""

    path: pathlib.Path
    dataset: str
    row: str
    setting: Setting
    seed: int | None
    accuracy: float
    wall_time_s: float | None

    @property
    def main(self) -> bool:
        """Whether the run has its method/variant's main config (no field suffix)."""
        return " (" not in self.row


def entries(runs: Sequence[runs_lib.Run], metric: str = METRIC) -> tuple[list[Entry], list[str]]:
    """The finished runs as Entry (`accuracy`: the summary's `metric`, in %), and notes on the runs
    left out (unfinished, without the metric, duplicates).

    Runs of one dataset and method/variant with different experiment_fields are separate rows:
    the config covering the most settings (then the most runs, then the first found) keeps the
    plain name; the others are named by the fields where they differ from it. A second run of
    one row, setting and seed (a rerun) is left out: a seed counts once.
    """
    usable, notes = [], []
    for run in runs:
        summary = run.summary
        if summary is None:
            notes.append(f"{run.path} (unfinished: no summary.json)")
        elif summary.get(metric) is None:
            notes.append(f"{run.path} (summary.json has no {metric})")
        else:
            usable.append((run, summary, experiment_fields(summary)))
    # (dataset, method/variant) -> config key -> [settings, run count, first index, fields]
    configs: dict[tuple[str, str], dict[tuple, list[Any]]] = {}
    for i, (_, summary, fields) in enumerate(usable):
        group = configs.setdefault((str(summary.get("dataset", "?")), row_name(summary)), {})
        stats = group.setdefault(tuple(sorted(fields.items())), [set(), 0, i, fields])
        stats[0].add(setting_of(summary))
        stats[1] += 1
    main = {
        group: min(stats.values(), key=lambda s: (-len(s[0]), -s[1], s[2]))[3]
        for group, stats in configs.items()
    }
    out: list[Entry] = []
    seen: dict[tuple[Any, ...], pathlib.Path] = {}
    for run, summary, fields in usable:
        dataset, base = str(summary.get("dataset", "?")), row_name(summary)
        diffs = differences(fields, main[dataset, base])
        row = f"{base} ({', '.join(diffs)})" if diffs else base
        seed = summary.get("seed")
        key = (dataset, row, setting_of(summary), seed)
        if seed is not None and key in seen:
            notes.append(f"{run.path} (same row, setting and seed as {seen[key]}: counted once)")
            continue
        seen[key] = run.path
        wall = summary.get("wall_time_s")
        out.append(
            Entry(
                path=run.path,
                dataset=dataset,
                row=row,
                setting=setting_of(summary),
                seed=seed,
                accuracy=100.0 * float(summary[metric]),
                wall_time_s=float(wall) if wall is not None else None,
            )
        )
    return out, notes
