"""Run logs: JSON lines + TensorBoard events through clu writers, a progress line, a summary."""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu import metric_writers


class JsonlWriter(metric_writers.MetricWriter):
    """Scalars as one JSON object per line: `{"step": s, "<name>": value, ...}`.

    Appends, so a resumed run continues the same file; readers take the last line for a
    repeated (step, name).
    """

    def __init__(self, path: str | pathlib.Path):
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- closed in close()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        row = {"step": int(step), **{k: _number(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()

    # Only scalars go to the JSON log; the rest goes to TensorBoard.
    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass


def _number(v) -> float | int:
    v = np.asarray(v).item()
    return v if isinstance(v, int) else float(v)


def make_writer(run_dir: pathlib.Path) -> metric_writers.MetricWriter:
    """JSON lines (`metrics.jsonl`) + TensorBoard events (`tensorboard/`) for one run directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tensorboard = metric_writers.create_default_writer(
        run_dir / "tensorboard", just_logging=False, asynchronous=True
    )
    return metric_writers.MultiWriter([JsonlWriter(run_dir / "metrics.jsonl"), tensorboard])


def format_duration(seconds: float) -> str:
    """h:mm:ss."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """One progress line per epoch: steps/s over the run, ETA, latest losses and accuracies."""

    def __init__(self, total_steps: int, start_step: int):
        self.total, self.start_step, self.start = total_steps, start_step, time.time()

    def line(self, epoch: int, num_epochs: int, step: int, values: Mapping[str, float]) -> str:
        elapsed = time.time() - self.start
        rate = (step - self.start_step) / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        return (
            f"epoch {epoch}/{num_epochs}  step {step}/{self.total}  {rate:.1f} steps/s  "
            f"ETA {format_duration(eta)}  |  {shown}"
        )


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
    rows += [
        (
            "wall time",
            f"{format_duration(summary['wall_time_s'])}  ({summary['steps_per_sec']:.1f} steps/s)",
        ),
        ("run directory", summary["run_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
