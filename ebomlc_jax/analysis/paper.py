"""The paper's Tables I-II: its settings, row order and numbers, and how a run maps onto them."""

from __future__ import annotations

from collections.abc import Mapping

# The paper's column order; settings it does not have are appended after these.
PAPER_SETTINGS = (
    ("uniform", 0.0),
    ("uniform", 0.2),
    ("uniform", 0.4),
    ("uniform", 0.6),
    ("uniform", 0.8),
    ("flip", 0.2),
    ("flip", 0.4),
)
# Row order: the floor first, then the paper's row order; unknown methods go last.
METHOD_ORDER = (
    "ce",
    "coteaching_plus",
    "dividemix",
    "glc",
    "l2rw",
    "mwnet",
    "pmwnet",
    "mlc",
    "mlc_d",
    "ebomlc",
)
REFERENCE_METHOD = "ebomlc"
METRIC = "test_accuracy_at_best_clean"
# The summary.json values a table can show (all fractions, shown in %): what each one is.
METRICS = {
    "test_accuracy_at_best_clean": "test accuracy (%) at the best clean-set epoch",
    "final_test_accuracy": "test accuracy (%) after the last epoch",
    "final_meta_accuracy_on_mislabelled": "meta model's accuracy (%) on the mislabelled examples "
    "of D', last epoch",
    "final_meta_accuracy_on_correct": "meta model's accuracy (%) on the correctly labelled "
    "examples of D', last epoch",
    "final_meta_change_rate": "share (%) of D' whose label the meta model changes, last epoch",
    "final_meta_change_precision": "share (%) of the meta model's changes that give the true "
    "label, last epoch",
}
# The metrics the paper's numbers can stand beside (it reports test accuracy).
PAPER_COMPARABLE = ("test_accuracy_at_best_clean", "final_test_accuracy")

# Paper Tables I (CIFAR-10) and II (CIFAR-100): accuracies in PAPER_SETTINGS order, and
# training time relative to EBOMLC (T4 GPU).
PAPER_NAMES = {
    "coteaching_plus": "Co-teaching+",
    "dividemix": "DivideMix",
    "glc": "GLC",
    "l2rw": "L2RW",
    "mwnet": "MW-Net",
    "pmwnet": "PMW-Net",
    "mlc": "MLC",
    "mlc_d": "MLC-D",
    "ebomlc": "EBOMLC",
}
PAPER_TABLE_NAMES = {"cifar10": "Table I", "cifar100": "Table II"}
PAPER_RESULTS: dict[str, dict[str, tuple[tuple[float, ...], float]]] = {
    "cifar10": {
        "coteaching_plus": ((89.14, 85.79, 82.98, 56.37, 44.85, 77.56, 72.93), 0.51),
        "dividemix": ((91.32, 87.15, 85.16, 82.45, 77.69, 82.90, 78.38), 1.12),
        "glc": ((92.25, 89.31, 86.20, 74.27, 64.38, 90.97, 89.75), 0.33),
        "l2rw": ((85.16, 82.51, 78.01, 72.19, 55.81, 84.49, 80.86), 1.69),
        "mwnet": ((88.91, 80.61, 71.55, 64.02, 48.36, 87.11, 84.75), 1.89),
        "pmwnet": ((90.74, 88.94, 86.80, 81.56, 45.30, 88.79, 87.36), 1.95),
        "mlc": ((92.76, 89.01, 86.08, 82.08, 74.10, 89.39, 87.12), 2.28),
        "mlc_d": ((67.75, 66.84, 67.56, 67.14, 67.58, 66.18, 62.57), 2.32),
        "ebomlc": ((92.92, 92.18, 89.58, 83.51, 76.02, 90.74, 90.54), 1.00),
    },
    "cifar100": {
        "coteaching_plus": ((56.28, 50.49, 46.80, 34.96, 9.14, 49.15, 36.69), 0.51),
        "dividemix": ((66.34, 61.92, 56.14, 48.59, 11.18, 54.14, 48.12), 1.12),
        "glc": ((68.28, 63.48, 56.82, 46.80, 23.27, 66.64, 47.59), 0.33),
        "l2rw": ((58.84, 52.90, 45.19, 37.71, 18.96, 53.57, 48.59), 1.69),
        "mwnet": ((63.91, 55.07, 52.55, 45.17, 18.87, 58.99, 45.41), 1.89),
        "pmwnet": ((66.98, 63.52, 56.12, 47.12, 20.53, 56.12, 47.73), 1.95),
        "mlc": ((65.03, 48.73, 39.06, 25.26, 15.58, 58.98, 57.46), 2.28),
        "mlc_d": ((17.02, 13.26, 15.98, 14.91, 12.06, 15.47, 15.58), 2.32),
        "ebomlc": ((67.13, 62.92, 58.15, 50.04, 35.41, 64.86, 58.11), 1.00),
    },
}

Setting = tuple[str, float]


def setting_of(summary: Mapping) -> Setting:
    """(noise kind, rate) of a run; every 0% setting is the paper's uniform-0% column."""
    rate = round(float(summary["noise_rate"]), 6)
    return ("uniform", 0.0) if rate == 0.0 else (str(summary["noise_kind"]), rate)


def setting_name(setting: Setting) -> str:
    """'uniform-40%' etc., as in the paper's column headers."""
    return f"{setting[0]}-{setting[1] * 100:g}%"


def row_name(summary: Mapping) -> str:
    """'method/variant', or 'method' when the method has no variant."""
    variant = summary.get("variant")
    return f"{summary['method']}/{variant}" if variant else str(summary["method"])


def setting_order(setting: Setting) -> tuple[int, str, float]:
    """Sort key: paper columns first in their order, then the rest by kind and rate."""
    if setting in PAPER_SETTINGS:
        return PAPER_SETTINGS.index(setting), "", 0.0
    return len(PAPER_SETTINGS), setting[0], setting[1]
