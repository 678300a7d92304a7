"""Run logs without TensorFlow: JSON lines and TensorBoard events, progress lines, the summary.

TensorBoard event files come from tensorboardX (numpy and protobuf only): clu's writers and
`clu.periodic_actions` import TensorFlow, which a digits run never needs. On several hosts only
process 0 writes (the others get a `NullWriter`), as clu's `create_default_writer` does.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np


class MetricWriter(Protocol):
    """What the training loop writes scalars through."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class JsonlWriter:
    """Scalars as one JSON object per line: `{"step": s, "<name>": value, ...}`.

    Appends, so a resumed run continues the same file; readers take the last line for a
    repeated (step, name).
    """

    def __init__(self, path: str | pathlib.Path):
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- closed in close()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: _number(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardWriter:
    """Scalars as TensorBoard event files (tensorboardX)."""

    def __init__(self, logdir: str | pathlib.Path):
        from tensorboardX import SummaryWriter  # loads protobuf: only when a run writes

        self._writer = SummaryWriter(str(logdir))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, _number(value), int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MultiWriter:
    """Writes to each of several writers."""

    def __init__(self, writers: list[MetricWriter]):
        self._writers = writers

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for w in self._writers:
            w.write_scalars(step, scalars)

    def flush(self) -> None:
        for w in self._writers:
            w.flush()

    def close(self) -> None:
        for w in self._writers:
            w.close()


class NullWriter:
    """Writes nothing (processes other than 0 of a multi-host run)."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _number(v) -> float | int:
    v = np.asarray(v).item()
    return v if isinstance(v, int) else float(v)


def make_writer(run_dir: pathlib.Path, writes: bool = True) -> MetricWriter:
    """JSON lines (`metrics.jsonl`) + TensorBoard events (`tensorboard/`) for one run directory;
    a NullWriter when this process does not write (`writes=False`)."""
    if not writes:
        return NullWriter()
    run_dir.mkdir(parents=True, exist_ok=True)
    return MultiWriter(
        [JsonlWriter(run_dir / "metrics.jsonl"), TensorBoardWriter(run_dir / "tensorboard")]
    )


def format_duration(seconds: float) -> str:
    """h:mm:ss."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Progress lines: steps/s and ETA measured from the first report after compilation.

    `report(step, values)` comes from inside an epoch (a callback of the compiled epoch, every
    `log_every_steps`) or at an epoch's end; the rate is taken between reports, so the time a
    run spends compiling before its first report never enters the ETA.
    """

    def __init__(self, total_steps: int, num_epochs: int, steps_per_epoch: int):
        self.total, self.num_epochs, self.spe = total_steps, num_epochs, steps_per_epoch
        self._first: tuple[float, int] | None = None  # (time, step) of the first report
        self._last_step = -1

    def report(self, step: int, values: Mapping[str, float], end_of_epoch: bool = False) -> str:
        """The line for `step` (1-based, as logged); prints nothing itself."""
        now = time.monotonic()
        if self._first is None:
            self._first = (now, step)
        start_time, start_step = self._first
        rate = (step - start_step) / (now - start_time) if step > start_step else float("nan")
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        self._last_step = step
        epoch = -(-step // self.spe)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        where = f"epoch {epoch}/{self.num_epochs}" + ("" if end_of_epoch else " ...")
        speed = f"{rate:.1f} steps/s" if math.isfinite(rate) else "- steps/s"
        return f"{where}  step {step}/{self.total}  {speed}  ETA {format_duration(eta)}  |  {shown}"


def _percent(value: float | None) -> str:
    """A fraction as a percentage; n/a where it is undefined (None)."""
    return "n/a" if value is None else f"{100 * value:.2f}%"


def summary_screen(summary: Mapping[str, Any]) -> str:
    """The end-of-run summary as a few aligned lines."""
    rows = [
        (
            "method",
            f"{summary['method']}" + (f"/{summary['variant']}" if summary["variant"] else ""),
        ),
        (
            "data",
            f"{summary['dataset']} {summary['noise_kind']}-{summary['noise_rate']:g} "
            f"(realised {summary['realised_noise_rate']:.4f}) seed {summary['seed']}",
        ),
        ("final test accuracy", f"{100 * summary['final_test_accuracy']:.2f}%"),
        (
            "test acc. at best clean",
            f"{100 * summary['test_accuracy_at_best_clean']:.2f}% "
            f"(epoch {summary['best_clean_epoch']}, clean "
            f"{100 * summary['best_clean_accuracy']:.2f}%)",
        ),
    ]
    if summary.get("final_meta_correction_accuracy") is not None:
        rows.append(
            ("meta correction (D')", f"{100 * summary['final_meta_correction_accuracy']:.2f}%")
        )
    if summary.get("final_meta_change_rate") is not None:  # runs of older versions lack them
        rows += [
            (
                "meta on mislabelled",
                f"{_percent(summary['final_meta_accuracy_on_mislabelled'])} corrected",
            ),
            (
                "meta on correct labels",
                f"{_percent(summary['final_meta_accuracy_on_correct'])} kept",
            ),
            (
                "meta changes",
                f"{_percent(summary['final_meta_change_rate'])} of D', "
                f"{_percent(summary['final_meta_change_precision'])} of them to the true label",
            ),
        ]
    rows += [
        (
            "wall time",
            f"{format_duration(summary['wall_time_s'])}  ({summary['steps_per_sec']:.1f} steps/s)",
        ),
        ("run directory", summary["run_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
