"""The paper's figures from run directories: training curves (Fig. 1/4/5), heatmaps (Fig. 2/6).

python -m ebomlc_jax.analysis.figures RUN_DIR [RUN_DIR ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from collections.abc import Sequence

import matplotlib

# Never need a display; but leave an interactive session's backend alone if pyplot is already up.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ebomlc_jax.analysis import runs as runs_lib  # noqa: E402

# (history key, panel title, y label, scale); accuracies are logged as fractions, shown in %.
CURVE_PANELS = (
    ("eval/clean_loss", "Loss of main model on the clean set D (Eq. 2)", "cross-entropy", 1.0),
    ("eval/test_accuracy", "Test accuracy of the main model", "accuracy (%)", 100.0),
    ("train_epoch/G", "Lower loss G (Eq. 3), epoch mean", "G", 1.0),
    ("train_epoch/F", "Upper loss F, epoch mean", "F", 1.0),
)
# Shown even when no run logged them (the paper's Fig. 4 pair); G and F only when present.
ALWAYS_SHOWN = ("eval/clean_loss", "eval/test_accuracy")


def _new_figure(width: float, height: float) -> Figure:
    """A Figure outside pyplot, so nothing is kept in pyplot's global registry."""
    return Figure(figsize=(width, height), layout="constrained")


def training_curves(runs: Sequence[runs_lib.Run], out_path: str | pathlib.Path) -> pathlib.Path:
    """PNG of clean loss, test accuracy and (when logged) lower/upper losses per epoch, per run."""
    panels = [
        p for p in CURVE_PANELS if p[0] in ALWAYS_SHOWN or any(p[0] in r.history for r in runs)
    ]
    ncols = 2
    nrows = -(-len(panels) // ncols)
    fig = _new_figure(6.0 * ncols, 4.0 * nrows + 0.3 * min(len(runs), 12))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = matplotlib.colormaps["tab10" if len(runs) <= 10 else "turbo"]
    for ax, (key, title, ylabel, scale) in zip(axes, panels, strict=False):
        for i, run in enumerate(runs):
            epochs, values = run.curve(key)
            colour = colours(i if len(runs) <= 10 else i / max(len(runs) - 1, 1))
            ax.plot(epochs, values * scale, color=colour, lw=1.4, label=run.label)
        if not any(key in r.history for r in runs):
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if runs:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(runs)), fontsize=8)
    out_path = pathlib.Path(out_path)
    fig.savefig(out_path, dpi=100)
    return out_path


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows of a true class that never occurs stay zero)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def correction_heatmap(run: runs_lib.Run, out_path: str | pathlib.Path) -> np.ndarray:
    """PNG of the row-normalised meta-model confusion on D' (Fig. 2/6); returns that matrix."""
    if run.confusion is None:
        raise ValueError(f"{run.path}: no {runs_lib.CONFUSION} (the method has no meta model?)")
    normalised = row_normalise(run.confusion)
    k = normalised.shape[0]
    fig = _new_figure(7.0, 6.0) if k <= 10 else _new_figure(9.0, 8.0)
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if k <= 10:
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        for i in range(k):
            for j in range(k):
                # Dark text on light cells, light on dark, so every value stays readable.
                colour = "white" if normalised[i, j] > 0.5 else "black"
                text = f"{normalised[i, j]:.2f}"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    ax.set_xlabel("meta model prediction")
    ax.set_ylabel("true label")
    accuracy = run.correction_accuracy()
    epoch = f", epoch {run.confusion_epoch}" if run.confusion_epoch is not None else ""
    accuracy_text = f"{accuracy:.2%}" if accuracy is not None else "n/a"
    ax.set_title(f"{run.label}\nmeta model correction accuracy {accuracy_text}{epoch}", fontsize=10)
    fig.savefig(pathlib.Path(out_path), dpi=100)
    return normalised


def safe_name(label: str) -> str:
    """A label as a file-name fragment: runs of other characters become one underscore."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_") or "run"


def write_figures(
    run_dirs: Sequence[str | pathlib.Path], out_dir: str | pathlib.Path | None = None
) -> list[pathlib.Path]:
    """curves.png for all runs and heatmap_<label>.png per run with a confusion; the paths."""
    runs = runs_lib.find_runs(run_dirs)
    out_dir = pathlib.Path(out_dir if out_dir is not None else run_dirs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [training_curves(runs, out_dir / "curves.png")]
    used: set[str] = set()
    for run in runs:
        if run.confusion is None:
            continue
        name = base = safe_name(run.label)
        n = 1
        while name in used:  # Two runs with one label (e.g. reruns) must not overwrite each other.
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        path = out_dir / f"heatmap_{name}.png"
        correction_heatmap(run, path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: writes the figures and prints their paths."""
    parser = argparse.ArgumentParser(
        prog="python -m ebomlc_jax.analysis.figures", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument("--out", default=None, help="output directory (default: first RUN_DIR)")
    args = parser.parse_args(argv)
    try:
        written = write_figures(args.run_dirs, args.out)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
