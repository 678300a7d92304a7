"""Tables (paper layout), figures and ablation figures from run directories; imports neither jax
nor tensorflow."""

import importlib

from ebomlc_jax.analysis.runs import Run, find_run_dirs, find_runs, load_run

# figures/tables/ablations load lazily: importing them here would make `python -m
# ebomlc_jax.analysis.figures` warn (module already in sys.modules) and pull in matplotlib.
_LAZY = {
    "training_curves": "figures",
    "correction_heatmap": "figures",
    "row_normalise": "figures",
    "write_figures": "figures",
    "group_heatmaps": "figures",
    "diagnostics_figure": "figures",
    "report": "tables",
    "paired_differences": "tables",
    "ablation_groups": "ablations",
    "write_ablation_figures": "ablations",
}

__all__ = ["Run", "find_run_dirs", "find_runs", "load_run", *_LAZY]


def __getattr__(name: str):
    """The figures/tables functions, imported on first use."""
    if name in _LAZY:
        module = importlib.import_module(f"ebomlc_jax.analysis.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
