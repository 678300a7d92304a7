"""Reading run directories: metrics.jsonl, summary.json, meta_confusion.json and
meta_confusion_history.jsonl into a `Run`; and the meta model's correction diagnostics, computed
from its confusion counts (the training loop's evaluation uses the same function)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFUSION = "meta_confusion.json"
CONFUSION_HISTORY = "meta_confusion_history.jsonl"
# What the meta model does to the labels of D' (see meta_diagnostics), logged as eval/<name>.
DIAGNOSTICS = (
    "meta_accuracy_on_mislabelled",
    "meta_accuracy_on_correct",
    "meta_change_rate",
    "meta_change_precision",
)

# Only these prefixes make up the per-epoch table; `train/` keys are per-step series.
EPOCH_PREFIXES = ("eval/", "train_epoch/")
STEP_PREFIX = "train/"
EPOCH_KEY = "eval/epoch"


def meta_diagnostics(
    mislabelled: np.ndarray, correct: np.ndarray, changed: np.ndarray, changed_to_true: np.ndarray
) -> dict[str, np.ndarray]:
    """The four DIAGNOSTICS from the counts, over any leading axes (seeds, epochs).

    `mislabelled` and `correct` are [..., K, K] counts (rows: true label, columns: argmax of
    g(h(x'), y')) over the examples of D' whose given label y' is wrong / right; `changed` counts
    the examples whose argmax differs from y', `changed_to_true` those changed to the true label.
    A meta model that returns the label it is given scores 0, 1, 0 and 0.

    - meta_accuracy_on_mislabelled: argmax == true label where y' is wrong (NaN with no such
      example, e.g. at noise rate 0: there is nothing to measure);
    - meta_accuracy_on_correct: the same where y' is right (NaN with no such example);
    - meta_change_rate: share of D' whose argmax differs from y';
    - meta_change_precision: share of the changed examples changed to the true label; 0 when
      nothing changed: then no label was corrected, so a copier scores 0 here as it does on the
      mislabelled examples, never a perfect 1 (the change rate of 0 says nothing changed), and the
      value stays a number (JSON, TensorBoard).
    """
    mislabelled, correct = np.asarray(mislabelled, np.float64), np.asarray(correct, np.float64)
    changed = np.asarray(changed, np.float64)
    changed_to_true = np.asarray(changed_to_true, np.float64)
    n_wrong, n_right = mislabelled.sum((-2, -1)), correct.sum((-2, -1))

    def share(part, whole, empty):
        return np.divide(part, whole, out=np.full(np.shape(whole), empty), where=whole > 0)

    return {
        "meta_accuracy_on_mislabelled": share(
            np.trace(mislabelled, axis1=-2, axis2=-1), n_wrong, np.nan
        ),
        "meta_accuracy_on_correct": share(np.trace(correct, axis1=-2, axis2=-1), n_right, np.nan),
        "meta_change_rate": share(changed, n_wrong + n_right, np.nan),
        "meta_change_precision": share(changed_to_true, changed, 0.0),
    }


@dataclasses.dataclass(frozen=True)
class ConfusionHistory:
    """The meta model's counts on D' after each evaluated epoch (meta_confusion_history.jsonl).

    Row i is 1-based epoch `epochs[i]`: `mislabelled[i]` and `correct[i]` are K x K counts (rows:
    true label, columns: the meta model's argmax) over the examples whose given label is wrong /
    right; `changed[i]` and `changed_to_true[i]` count the examples whose argmax differs from the
    given label, and those of them whose argmax is the true label.
    """

    epochs: np.ndarray
    mislabelled: np.ndarray
    correct: np.ndarray
    changed: np.ndarray
    changed_to_true: np.ndarray

    def diagnostics(self) -> dict[str, np.ndarray]:
        """DIAGNOSTICS per epoch (see meta_diagnostics)."""
        return meta_diagnostics(self.mislabelled, self.correct, self.changed, self.changed_to_true)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run directory: its label, summary, per-epoch scalars and meta-model confusion counts.

    `epochs[i]` is the 1-based epoch of row i of every `history[key]` (NaN where the key was not
    logged that epoch); `steps[i]` is the training step at which that epoch was evaluated.
    `step_series[key]` holds (steps, values) for the per-step `train/` scalars.
    `confusion` is the last epoch's meta-model confusion on all of D'; `confusion_history` the
    per-epoch counts by group (None when the run has no such file).
    Accuracies are fractions in [0, 1], as the training loop logs them.
    """

    path: pathlib.Path
    label: str
    summary: dict[str, Any] | None
    epochs: np.ndarray
    steps: np.ndarray
    history: dict[str, np.ndarray]
    step_series: dict[str, tuple[np.ndarray, np.ndarray]]
    confusion: np.ndarray | None
    confusion_epoch: int | None
    confusion_history: ConfusionHistory | None = None

    @property
    def finished(self) -> bool:
        """Whether the run wrote its summary.json."""
        return self.summary is not None

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, values) of a per-epoch scalar, epochs where it is missing dropped."""
        if key not in self.history:
            return np.zeros(0, np.int64), np.zeros(0)
        values = self.history[key]
        keep = ~np.isnan(values)
        return self.epochs[keep], values[keep]

    def correction_accuracy(self) -> float | None:
        """Fraction of D' whose meta-model argmax is the true label, from the confusion counts."""
        if self.confusion is None or self.confusion.sum() == 0:
            return None
        return float(np.trace(self.confusion) / self.confusion.sum())


def _scalar(value: Any, path: pathlib.Path, lineno: int, key: str) -> float:
    """A metric value as float; None (a logged NaN in some writers) reads as NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}:{lineno}: value of {key!r} is {value!r}, not a number")
    return float(value)


def read_metrics(path: str | pathlib.Path) -> dict[int, dict[str, tuple[int, float]]]:
    """step -> key -> (line number of its last write, value); the last (step, key) write wins."""
    path = pathlib.Path(path)
    text = path.read_text()
    lines = text.split("\n")
    by_step: dict[int, dict[str, tuple[int, float]]] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            # A run killed mid-write leaves a cut final line with no newline; the rest is good.
            if lineno == len(lines) and not text.endswith("\n"):
                warnings.warn(
                    f"{path}:{lineno}: skipping a truncated last line ({e})", stacklevel=2
                )
                continue
            raise ValueError(
                f"{path}:{lineno}: malformed line, not JSON ({e}): {line[:80]!r}"
            ) from e
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: malformed line, not a JSON object: {line[:80]!r}")
        step = record.pop("step", None)
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"{path}:{lineno}: malformed line, 'step' is {step!r}, not an int")
        entry = by_step.setdefault(step, {})
        for key, value in record.items():
            entry[key] = (lineno, _scalar(value, path, lineno, key))
    return by_step


def _epoch_table(
    by_step: Mapping[int, Mapping[str, tuple[int, float]]], path: pathlib.Path
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(epochs, steps, key -> per-epoch values) from the steps that carry `eval/epoch`."""
    rows: dict[int, tuple[int, int, dict[str, float]]] = {}  # epoch -> (line, step, scalars)
    for step, entry in by_step.items():
        if EPOCH_KEY not in entry:
            continue
        lineno, epoch = entry[EPOCH_KEY]
        if not float(epoch).is_integer():
            raise ValueError(f"{path}:{lineno}: malformed line, {EPOCH_KEY} is {epoch}")
        # After a resume with another step count the same epoch can sit at two steps: the later
        # write in the file is the one the finished run stands by.
        if int(epoch) not in rows or rows[int(epoch)][0] < lineno:
            scalars = {k: v for k, (_, v) in entry.items() if k.startswith(EPOCH_PREFIXES)}
            rows[int(epoch)] = (lineno, step, scalars)
    epochs = np.array(sorted(rows), dtype=np.int64)
    steps = np.array([rows[e][1] for e in epochs], dtype=np.int64)
    keys = sorted({k for row in rows.values() for k in row[2]} - {EPOCH_KEY})
    history = {k: np.array([rows[e][2].get(k, math.nan) for e in epochs]) for k in keys}
    return epochs, steps, history


def _step_series(
    by_step: Mapping[int, Mapping[str, tuple[int, float]]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (steps, values) for every per-step `train/` scalar, in step order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(by_step):
        for key, (_, value) in by_step[step].items():
            if key.startswith(STEP_PREFIX):
                series.setdefault(key, []).append((step, value))
    return {
        k: (np.array([s for s, _ in v], np.int64), np.array([x for _, x in v]))
        for k, v in series.items()
    }


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    """A JSON object from `path`; ValueError naming the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_confusion(path: pathlib.Path) -> tuple[np.ndarray, int | None]:
    """(K x K counts, epoch) from meta_confusion.json."""
    data = _read_json(path)
    counts = np.asarray(data.get("counts"), dtype=np.float64)
    k = data.get("num_classes", counts.shape[0] if counts.ndim else None)
    if counts.ndim != 2 or counts.shape != (k, k):
        raise ValueError(f"{path}: 'counts' has shape {counts.shape}, expected ({k}, {k})")
    if (counts < 0).any():
        raise ValueError(f"{path}: 'counts' has negative entries")
    epoch = data.get("epoch")
    return counts, (int(epoch) if epoch is not None else None)


def _counts(value: Any, k: int, where: str) -> np.ndarray:
    """A K x K array of non-negative counts; ValueError saying `where` otherwise."""
    try:
        counts = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: counts are not a K x K array of numbers ({e})") from e
    if counts.shape != (k, k):
        raise ValueError(f"{where}: counts have shape {counts.shape}, expected ({k}, {k})")
    if (counts < 0).any():
        raise ValueError(f"{where}: counts have negative entries")
    return counts


def read_confusion_history(path: str | pathlib.Path) -> ConfusionHistory:
    """The per-epoch group counts of meta_confusion_history.jsonl, in epoch order.

    A resumed run appends the epochs it redoes again: the last line of an epoch wins. A cut
    last line (a run killed mid-write) is skipped with a warning; any other bad line is a
    ValueError naming the file and line.
    """
    path = pathlib.Path(path)
    text = path.read_text()
    lines = text.split("\n")
    rows: dict[int, dict[str, Any]] = {}
    k = None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines) and not text.endswith("\n"):
                warnings.warn(f"{where}: skipping a truncated last line ({e})", stacklevel=2)
                continue
            raise ValueError(f"{where}: malformed line, not JSON ({e})") from e
        if not isinstance(record, dict):
            raise ValueError(f"{where}: malformed line, not a JSON object")
        missing = {"epoch", "num_classes", "mislabelled", "correct", "changed", "changed_to_true"}
        missing -= set(record)
        if missing:
            raise ValueError(f"{where}: malformed line, missing {sorted(missing)}")
        numbers = [record[key] for key in ("epoch", "num_classes", "changed", "changed_to_true")]
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in numbers):
            raise ValueError(f"{where}: epoch, num_classes and the changed counts must be counts")
        if k is not None and record["num_classes"] != k:
            raise ValueError(f"{where}: num_classes {record['num_classes']}, earlier lines {k}")
        k = record["num_classes"]
        rows[record["epoch"]] = {
            "mislabelled": _counts(record["mislabelled"], k, where),
            "correct": _counts(record["correct"], k, where),
            "changed": record["changed"],
            "changed_to_true": record["changed_to_true"],
        }
    epochs = sorted(rows)

    def stack(key: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.array([rows[e][key] for e in epochs], np.float64).reshape(len(epochs), *shape)

    k = k or 0
    return ConfusionHistory(
        epochs=np.array(epochs, np.int64),
        mislabelled=stack("mislabelled", (k, k)),
        correct=stack("correct", (k, k)),
        changed=stack("changed", ()),
        changed_to_true=stack("changed_to_true", ()),
    )


def run_label(summary: Mapping[str, Any] | None, path: pathlib.Path) -> str:
    """'method/variant kind-rate seed s' from a summary; the directory name for unfinished runs."""
    if summary is None:
        # seed_<s> alone says nothing about which experiment it belongs to.
        name = (
            f"{path.parent.name}/{path.name}" if re.fullmatch(r"seed_\d+", path.name) else path.name
        )
        return f"{name} (unfinished)"
    method = str(summary.get("method", "?"))
    if summary.get("variant"):
        method = f"{method}/{summary['variant']}"
    rate = summary.get("noise_rate")
    setting = f"{summary.get('noise_kind', '?')}-{rate:g}" if rate is not None else "?"
    return f"{method} {setting} seed {summary.get('seed', '?')}"


def load_run(path: str | pathlib.Path) -> Run:
    """Reads one run directory; ValueError naming the path if metrics.jsonl is missing or bad."""
    path = pathlib.Path(path)
    metrics = path / METRICS
    if not metrics.is_file():
        raise ValueError(f"{path}: not a run directory (no {METRICS})")
    by_step = read_metrics(metrics)
    epochs, steps, history = _epoch_table(by_step, metrics)
    summary = _read_json(path / SUMMARY) if (path / SUMMARY).is_file() else None
    confusion, confusion_epoch = (
        _read_confusion(path / CONFUSION) if (path / CONFUSION).is_file() else (None, None)
    )
    history_path = path / CONFUSION_HISTORY
    confusion_history = read_confusion_history(history_path) if history_path.is_file() else None
    return Run(
        path=path,
        label=run_label(summary, path),
        summary=summary,
        epochs=epochs,
        steps=steps,
        history=history,
        step_series=_step_series(by_step),
        confusion=confusion,
        confusion_epoch=confusion_epoch,
        confusion_history=confusion_history,
    )


def _natural_key(path: pathlib.Path) -> tuple[tuple[Any, ...], ...]:
    """Sort key putting seed_2 before seed_10, at every level of a path."""
    return tuple(
        tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", part)) for part in path.parts
    )


def find_run_dirs(paths: Iterable[str | pathlib.Path]) -> list[pathlib.Path]:
    """Every directory holding metrics.jsonl at or below each path (a run, its seed_<s>/ runs, a
    sweep's root), in natural order; a run reached twice counts once."""
    found: list[pathlib.Path] = []
    seen: set[pathlib.Path] = set()
    for path in map(pathlib.Path, paths):
        if not path.is_dir():
            raise ValueError(f"{path}: no such run directory")
        dirs = sorted(
            (pathlib.Path(d) for d, _, files in os.walk(path) if METRICS in files), key=_natural_key
        )
        if not dirs:
            raise ValueError(f"{path}: no {METRICS} in it or in its subdirectories")
        for d in dirs:
            if d.resolve() not in seen:
                seen.add(d.resolve())
                found.append(d)
    return found


def find_runs(paths: Iterable[str | pathlib.Path]) -> list[Run]:
    """Loads every run under `paths` (see find_run_dirs), in the order given."""
    return [load_run(d) for d in find_run_dirs(paths)]
