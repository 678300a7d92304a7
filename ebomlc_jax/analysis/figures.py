"""The paper's figures from run directories: training curves (Fig. 1/4/5), heatmaps (Fig. 2/6);
and whether the meta model corrects labels or copies them: its confusion on the mislabelled and
the correctly labelled examples of D' apart, and its diagnostics over the epochs.

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


def _draw_heatmap(fig: Figure, ax, normalised: np.ndarray, colorbar: bool = True) -> None:
    """Row-normalised counts as a heatmap: rows true label, columns the meta model's label."""
    k = normalised.shape[0]
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    if colorbar:
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


def correction_heatmap(run: runs_lib.Run, out_path: str | pathlib.Path) -> np.ndarray:
    """PNG of the row-normalised meta-model confusion on D' (Fig. 2/6); returns that matrix."""
    if run.confusion is None:
        raise ValueError(f"{run.path}: no {runs_lib.CONFUSION} (the method has no meta model?)")
    normalised = row_normalise(run.confusion)
    k = normalised.shape[0]
    fig = _new_figure(7.0, 6.0) if k <= 10 else _new_figure(9.0, 8.0)
    ax = fig.subplots()
    _draw_heatmap(fig, ax, normalised)
    accuracy = run.correction_accuracy()
    epoch = f", epoch {run.confusion_epoch}" if run.confusion_epoch is not None else ""
    accuracy_text = f"{accuracy:.2%}" if accuracy is not None else "n/a"
    ax.set_title(f"{run.label}\nmeta model correction accuracy {accuracy_text}{epoch}", fontsize=10)
    fig.savefig(pathlib.Path(out_path), dpi=100)
    return normalised


def _share_text(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.2%}"


def group_heatmaps(
    run: runs_lib.Run, out_path: str | pathlib.Path
) -> tuple[np.ndarray, np.ndarray]:
    """PNG of the last epoch's row-normalised meta-model confusion on the mislabelled and on the
    correctly labelled examples of D', side by side; returns the two matrices.

    On the mislabelled examples the diagonal is what the meta model corrected (a model that
    returns the label it is given has none); on the correct ones it is what it kept.
    """
    history = run.confusion_history
    if history is None or not len(history.epochs):
        raise ValueError(
            f"{run.path}: no {runs_lib.CONFUSION_HISTORY} (the method has no meta model?)"
        )
    diagnostics = {k: v[-1] for k, v in history.diagnostics().items()}
    panels = (
        (history.mislabelled[-1], "given label wrong", "corrected",
         diagnostics["meta_accuracy_on_mislabelled"]),
        (history.correct[-1], "given label right", "kept",
         diagnostics["meta_accuracy_on_correct"]),
    )  # fmt: skip
    k = history.mislabelled.shape[-1]
    fig = _new_figure(13.0, 6.0) if k <= 10 else _new_figure(17.0, 8.0)
    axes = fig.subplots(1, 2)
    shown = []
    for ax, (counts, group, verb, accuracy) in zip(axes, panels, strict=True):
        normalised = row_normalise(counts)
        _draw_heatmap(fig, ax, normalised, colorbar=ax is axes[-1])
        ax.set_title(
            f"{group} (n={int(counts.sum())}): {_share_text(accuracy)} {verb}", fontsize=10
        )
        shown.append(normalised)
    fig.suptitle(
        f"{run.label}\nmeta model on D' by given label, epoch {history.epochs[-1]}; change rate "
        f"{_share_text(diagnostics['meta_change_rate'])}, "
        f"{_share_text(diagnostics['meta_change_precision'])} of changes to the true label",
        fontsize=10,
    )
    fig.savefig(pathlib.Path(out_path), dpi=100)
    return shown[0], shown[1]


# (diagnostic, panel title); all shares, shown in %.
DIAGNOSTIC_PANELS = (
    ("meta_accuracy_on_mislabelled", "Mislabelled examples of D' corrected (copier: 0%)"),
    ("meta_accuracy_on_correct", "Correctly labelled examples of D' kept (copier: 100%)"),
    ("meta_change_rate", "Share of D' whose label the meta model changes (copier: 0%)"),
    ("meta_change_precision", "Changes to the true label (0% when nothing changed)"),
)


def diagnostics_figure(
    runs: Sequence[runs_lib.Run], out_path: str | pathlib.Path
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """PNG of the four meta-model diagnostics per epoch, one line per run with a confusion
    history; returns (epochs, diagnostics) of each run drawn, in order."""
    drawn = [r for r in runs if r.confusion_history is not None and len(r.confusion_history.epochs)]
    if not drawn:
        raise ValueError(f"no run has a {runs_lib.CONFUSION_HISTORY}")
    fig = _new_figure(12.0, 8.0 + 0.3 * min(len(drawn), 12))
    axes = fig.subplots(2, 2, squeeze=False).ravel()
    colours = matplotlib.colormaps["tab10" if len(drawn) <= 10 else "turbo"]
    values = [(r.confusion_history.epochs, r.confusion_history.diagnostics()) for r in drawn]
    for ax, (key, title) in zip(axes, DIAGNOSTIC_PANELS, strict=True):
        for i, (run, (epochs, diagnostics)) in enumerate(zip(drawn, values, strict=True)):
            colour = colours(i if len(drawn) <= 10 else i / max(len(drawn) - 1, 1))
            ax.plot(epochs, 100 * diagnostics[key], color=colour, lw=1.4, marker=".",
                    label=run.label)  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("%")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(drawn)), fontsize=8)
    fig.savefig(pathlib.Path(out_path), dpi=100)
    return values


def safe_name(label: str) -> str:
    """A label as a file-name fragment: runs of other characters become one underscore."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_") or "run"


def unique_name(base: str, used: set[str]) -> str:
    """`base`, or base_2, base_3, ... when an earlier figure took it; recorded in `used` (two runs
    or groups with one name, e.g. reruns, must not overwrite each other's files)."""
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}_{n}"
    used.add(name)
    return name


def write_figures(
    run_dirs: Sequence[str | pathlib.Path], out_dir: str | pathlib.Path | None = None
) -> list[pathlib.Path]:
    """curves.png for all runs, meta_diagnostics.png for those with a confusion history, and
    per run heatmap_<label>.png (all of D') and heatmap_groups_<label>.png (mislabelled and
    correct apart) where it has those counts; the paths."""
    runs = runs_lib.find_runs(run_dirs)
    out_dir = pathlib.Path(out_dir if out_dir is not None else run_dirs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [training_curves(runs, out_dir / "curves.png")]
    has_history = [
        r.confusion_history is not None and len(r.confusion_history.epochs) for r in runs
    ]
    if any(has_history):
        diagnostics_figure(runs, out_dir / "meta_diagnostics.png")
        written.append(out_dir / "meta_diagnostics.png")
    used: set[str] = set()
    for run, history in zip(runs, has_history, strict=True):
        if run.confusion is None and not history:
            continue
        name = unique_name(safe_name(run.label), used)
        if run.confusion is not None:
            correction_heatmap(run, out_dir / f"heatmap_{name}.png")
            written.append(out_dir / f"heatmap_{name}.png")
        if history:
            group_heatmaps(run, out_dir / f"heatmap_groups_{name}.png")
            written.append(out_dir / f"heatmap_groups_{name}.png")
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
