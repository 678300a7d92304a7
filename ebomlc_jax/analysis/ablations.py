"""Figures of the ablations found in a root of runs: k (Fig. 7), rho (Fig. 8), xi (Fig. 9), EBOMLC's
paper vs reference step, and the meta-model diagnostics per method.

python -m ebomlc_jax.analysis.ablations ROOT [ROOT ...] --out DIR

An ablation group is the set of runs that share everything but the ablated field and the seed:
dataset, noise setting, method and every field of the config that defines the experiment
(cells.experiment_fields), compared as values, never read from directory names. A group with two
or more values of the field gets one PNG: clean-set loss and test accuracy per epoch (mean over
seeds, band of one sample std) and test_accuracy_at_best_clean against the value. Each dataset
and setting gets the learning curves of every row (clean loss, test accuracy) in one PNG and,
for the rows that log them, the four meta-model diagnostics in another.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ebomlc_jax.analysis import cells, figures, paper, tables
from ebomlc_jax.analysis import runs as runs_lib


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One ablated config field: file-name prefix, dotted field, figure title."""

    name: str
    field: str
    title: str


ABLATIONS = (
    Ablation("k", "method.ebomlc.k", "Fig. 7: EBOMLC inner steps k"),
    Ablation("rho", "method.ebomlc.rho", "Fig. 8: EBOMLC mixture coefficient rho"),
    Ablation("xi", "method.ebomlc.xi", "Fig. 9: EBOMLC scaling constant xi"),
    Ablation("variant", "method.ebomlc.variant", "EBOMLC step: paper (Algorithm 2) vs reference"),
)
# (metrics key, panel title, y label, scale); accuracies and rates are logged as fractions.
CURVES = (
    ("eval/clean_loss", "Loss of the main model on the clean set D", "cross-entropy", 1.0),
    ("eval/test_accuracy", "Test accuracy of the main model", "accuracy (%)", 100.0),
)
DIAGNOSTICS = (
    ("eval/meta_accuracy_on_mislabelled", "Meta model: accuracy on mislabelled D'", "%", 100.0),
    ("eval/meta_accuracy_on_correct", "Meta model: accuracy on correctly labelled D'", "%", 100.0),
    ("eval/meta_change_rate", "Meta model: change rate", "%", 100.0),
    ("eval/meta_change_precision", "Meta model: change precision", "%", 100.0),
)


@dataclasses.dataclass(frozen=True)
class Band:
    """A per-epoch mean over runs, its sample std (0 where n < 2) and the run count n."""

    epochs: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: np.ndarray


def mean_curve(runs: Sequence[runs_lib.Run], key: str, scale: float = 1.0) -> Band:
    """Mean and sample std over the runs that logged `key` at each epoch."""
    per_epoch: dict[int, list[float]] = {}
    for run in runs:
        epochs, values = run.curve(key)
        for epoch, value in zip(epochs, values, strict=True):
            per_epoch.setdefault(int(epoch), []).append(float(value) * scale)
    epochs = np.array(sorted(per_epoch), dtype=np.int64)
    stacks = [per_epoch[e] for e in epochs]
    return Band(
        epochs=epochs,
        mean=np.array([np.mean(v) for v in stacks]),
        std=np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in stacks]),
        n=np.array([len(v) for v in stacks], dtype=np.int64),
    )


@dataclasses.dataclass(frozen=True)
class Group:
    """Runs sharing everything but `ablation.field`: (value, runs) in value order."""

    ablation: Ablation
    dataset: str
    setting: paper.Setting
    row: str
    shared: Mapping[str, Any]
    members: tuple[tuple[Any, tuple[runs_lib.Run, ...]], ...]

    @property
    def values(self) -> tuple[Any, ...]:
        """The ablated field's values, in order."""
        return tuple(v for v, _ in self.members)


def _value_key(value: Any) -> tuple[int, Any]:
    """Numbers in numeric order, then everything else by its text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return 0, value
    return 1, str(value)


def ablation_groups(runs: Sequence[runs_lib.Run], ablation: Ablation) -> list[Group]:
    """The groups of finished runs with two or more values of `ablation.field`; a seed counts once
    per value (the first run found)."""
    found: dict[tuple[Any, ...], dict[Any, dict[Any, runs_lib.Run]]] = {}
    rows: dict[tuple[Any, ...], str] = {}
    for run in runs:
        summary = run.summary
        if summary is None:
            continue
        fields = cells.experiment_fields(summary)
        if ablation.field not in fields:
            continue
        value = fields.pop(ablation.field)
        dataset, setting = str(summary.get("dataset", "?")), paper.setting_of(summary)
        key = (dataset, setting, str(summary.get("method")), tuple(sorted(fields.items())))
        seeds = found.setdefault(key, {}).setdefault(value, {})
        seed = summary.get("seed")
        seeds.setdefault(run.path if seed is None else seed, run)
        ablates_variant = ablation.field.endswith(".variant")
        rows[key] = str(summary.get("method")) if ablates_variant else paper.row_name(summary)
    groups = [
        Group(
            ablation=ablation,
            dataset=key[0],
            setting=key[1],
            row=rows[key],
            shared=dict(key[3]),
            members=tuple(
                (v, tuple(by_value[v].values())) for v in sorted(by_value, key=_value_key)
            ),
        )
        for key, by_value in found.items()
        if len(by_value) >= 2
    ]
    return sorted(
        groups,
        key=lambda g: (
            g.dataset,
            paper.setting_order(g.setting),
            g.row,
            [(f, _value_key(v)) for f, v in sorted(g.shared.items())],
        ),
    )


def _short(field: str) -> str:
    """The last part of a dotted field."""
    return field.rsplit(".", 1)[-1]


def _plot_band(ax, band: Band, colour, label: str) -> None:
    """The mean line and, where two or more runs, a shaded ± one std band."""
    ax.plot(band.epochs, band.mean, color=colour, lw=1.4, label=label)
    if (band.n > 1).any():
        ax.fill_between(
            band.epochs, band.mean - band.std, band.mean + band.std, color=colour, alpha=0.2, lw=0
        )


def _style(ax, title: str, ylabel: str, xlabel: str = "epoch") -> None:
    """Title, labels and grid of one panel."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def ablation_figure(group: Group, out_path: str | pathlib.Path, subtitle: str = "") -> pathlib.Path:
    """PNG of one group: clean loss and test accuracy per epoch per value; final accuracy."""
    fig = Figure(figsize=(17.0, 4.8), layout="constrained")
    axes = fig.subplots(1, len(CURVES) + 1)
    colours = matplotlib.colormaps["tab10"]
    name = _short(group.ablation.field)
    for ax, (key, title, ylabel, scale) in zip(axes, CURVES, strict=False):
        for i, (value, runs) in enumerate(group.members):
            label = f"{name}={cells.value_text(value)} (n={len(runs)})"
            _plot_band(ax, mean_curve(runs, key, scale), colours(i % 10), label)
        _style(ax, title, ylabel)
    finals = [
        [
            100.0 * float(r.summary[paper.METRIC])
            for r in runs
            if r.summary.get(paper.METRIC) is not None
        ]
        for _, runs in group.members
    ]
    positions = np.arange(len(finals))
    means = [np.mean(f) if f else np.nan for f in finals]
    stds = [np.std(f, ddof=1) if len(f) > 1 else 0.0 for f in finals]
    axes[-1].errorbar(positions, means, yerr=stds, fmt="o-", capsize=4, color="k")
    axes[-1].set_xticks(positions, [cells.value_text(v) for v in group.values])
    _style(axes[-1], "Test accuracy at the best clean-set epoch", "accuracy (%)", name)
    axes[0].legend(fontsize=8)
    setting = paper.setting_name(group.setting)
    heading = f"{group.ablation.title} - {group.row} on {group.dataset}, {setting}"
    heading += f" ({subtitle})" if subtitle else ""
    fig.suptitle(
        f"{heading}\nmean over seeds (n in the legend), band: ± one sample std", fontsize=11
    )
    out_path = pathlib.Path(out_path)
    fig.savefig(out_path, dpi=90)
    return out_path


def rows_figure(
    by_row: Mapping[str, Sequence[runs_lib.Run]],
    panels: Sequence[tuple[str, str, str, float]],
    title: str,
    out_path: str | pathlib.Path,
) -> pathlib.Path:
    """PNG of per-epoch curves (one panel per (key, title, y label, scale)), one line and band per
    row: the mean over the row's runs and ± one sample std."""
    ncols = 2
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(12.0, 4.25 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = matplotlib.colormaps["tab10" if len(by_row) <= 10 else "tab20"]
    for ax, (key, panel, ylabel, scale) in zip(axes, panels, strict=False):
        for i, (row, runs) in enumerate(by_row.items()):
            band = mean_curve(runs, key, scale)
            if band.epochs.size:
                _plot_band(ax, band, colours(i % 20), f"{row} (n={len(runs)})")
        if not ax.lines:
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
        _style(ax, panel, ylabel)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles, labels = next(((a.get_legend_handles_labels()) for a in axes if a.lines), ([], []))
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
    fig.suptitle(f"{title}\nmean over seeds (n in the legend), band: ± one sample std", fontsize=11)
    out_path = pathlib.Path(out_path)
    fig.savefig(out_path, dpi=90)
    return out_path


def diagnostics_figure(
    by_row: Mapping[str, Sequence[runs_lib.Run]], title: str, out_path: str | pathlib.Path
) -> pathlib.Path:
    """PNG of the four meta-model diagnostics per epoch, one line (and band) per row."""
    return rows_figure(by_row, DIAGNOSTICS, title, out_path)


def _unique(path: pathlib.Path, used: set[str]) -> pathlib.Path:
    """`path`, or path_2, path_3, ... when an earlier figure took it (figures.unique_name)."""
    return path.with_name(figures.unique_name(path.stem, used) + path.suffix)


def _setting_file(setting: paper.Setting) -> str:
    """'uniform40' for ('uniform', 0.4)."""
    return f"{setting[0]}{setting[1] * 100:g}"


def _subtitle(group: Group, groups: Sequence[Group]) -> str:
    """The shared fields in which this group differs from the other groups of its row and setting
    (e.g. the rho of a k ablation run at two rhos); empty when it is the only one."""
    place = (group.dataset, group.setting, group.row)
    siblings = [g for g in groups if (g.dataset, g.setting, g.row) == place]
    fields = sorted({f for g in siblings for f in g.shared})
    varying = [f for f in fields if len({g.shared.get(f) for g in siblings}) > 1]
    return ", ".join(cells.field_label(f, group.shared.get(f)) for f in varying)


def _row_cells(
    runs: Sequence[runs_lib.Run], panels: Sequence[tuple[str, str, str, float]]
) -> dict[tuple[str, paper.Setting], dict[str, list[runs_lib.Run]]]:
    """(dataset, setting) -> table row -> the finished runs that logged any of the panels' keys."""
    row_of = {e.path: e for e in cells.entries(runs)[0]}
    keys = {key for key, *_ in panels}
    found: dict[tuple[str, paper.Setting], dict[str, list[runs_lib.Run]]] = {}
    for run in runs:
        entry = row_of.get(run.path)
        if entry is not None and keys & set(run.history):
            by_row = found.setdefault((entry.dataset, entry.setting), {})
            by_row.setdefault(entry.row, []).append(run)
    order = sorted(found, key=lambda c: (c[0], paper.setting_order(c[1])))
    return {c: {row: found[c][row] for row in sorted(found[c], key=cells.row_order)} for c in order}


def write_ablation_figures(
    runs: Sequence[runs_lib.Run], out_dir: str | pathlib.Path
) -> list[tuple[pathlib.Path, str]]:
    """Every ablation group's figure and every setting's learning-curve and diagnostics figures:
    (path, what)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[tuple[pathlib.Path, str]] = []
    used: set[str] = set()  # file stems already written (all PNGs in out_dir)
    for ablation in ABLATIONS:
        groups = ablation_groups(runs, ablation)
        for group in groups:
            subtitle = _subtitle(group, groups)
            name = f"{ablation.name}_{group.dataset}_{_setting_file(group.setting)}.png"
            path = ablation_figure(group, _unique(out_dir / name, used), subtitle)
            values = ", ".join(cells.value_text(v) for v in group.values)
            setting = paper.setting_name(group.setting)
            what = f"{ablation.title}; {group.row}, {group.dataset} {setting}"
            what += f"; {_short(ablation.field)} in {values}" + (
                f"; {subtitle}" if subtitle else ""
            )
            written.append((path, what))
    for panels, what, stem in (
        (CURVES, "learning curves", "curves"),
        (DIAGNOSTICS, "meta-model diagnostics", "meta_diagnostics"),
    ):
        for (dataset, setting), by_row in _row_cells(runs, panels).items():
            title = f"{what}, {dataset} {paper.setting_name(setting)}"
            name = f"{stem}_{dataset}_{_setting_file(setting)}.png"
            path = rows_figure(by_row, panels, title, _unique(out_dir / name, used))
            written.append((path, f"{title}; rows: {', '.join(by_row)}"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: writes the figures and prints one 'path: what' line each."""
    parser = tables.OneLineParser(
        prog="python -m ebomlc_jax.analysis.ablations", description=__doc__.splitlines()[0]
    )
    parser.add_argument("roots", nargs="+", metavar="ROOT", help="roots of runs (recursive)")
    parser.add_argument("--out", required=True, help="output directory of the PNGs")
    args = parser.parse_args(argv)
    try:
        runs = runs_lib.find_runs(args.roots)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    written = write_ablation_figures(runs, args.out)
    for path, what in written:
        print(f"{path}: {what}")
    if not written:
        print(f"no ablation groups, learning curves or meta-model diagnostics in {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
