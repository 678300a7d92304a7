"""The clean/noisy split of a training set: a small balanced clean set D and the rest D'."""

from __future__ import annotations

import numpy as np

from ebomlc_jax import errors
from ebomlc_jax.data import noise

# Tag mixed into the split's RandomState seed, so that the split and the noise draw (which uses
# RandomState(seed) as the released loader does) are independent streams for the same run seed.
_SPLIT_STREAM = 0x5B1


def split_clean_noisy(
    labels: np.ndarray, num_classes: int, clean_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(clean_idx, noisy_idx): round(clean_fraction * N / K) per class in D, all the rest in D'.

    Unlike the released loader, whose clean and noisy sets come from independent draws and
    overlap, D and D' here are disjoint and together cover the training set. Indices are sorted.
    """
    labels = np.asarray(labels)
    noise._check_num_classes(num_classes)
    noise._check_labels(labels, num_classes)
    noise._check_seed(seed)
    if (
        isinstance(clean_fraction, bool)
        or not isinstance(clean_fraction, int | float | np.floating)
        or not 0.0 < clean_fraction < 1.0
    ):
        raise errors.allowed("data.clean_fraction", clean_fraction, "a number in (0, 1)")
    n = labels.shape[0]
    per_class = round(clean_fraction * n / num_classes)
    if per_class < 1:
        raise errors.allowed(
            "data.clean_fraction",
            clean_fraction,
            f"values with round(clean_fraction * N / K) >= 1 (N={n}, K={num_classes}); this one "
            f"leaves every class with no clean example",
        )
    counts = np.bincount(labels, minlength=num_classes)
    short = np.flatnonzero(counts <= per_class)
    if short.size:
        c = int(short[0])
        raise errors.allowed(
            "data.clean_fraction",
            clean_fraction,
            f"values that leave every class at least one clean and one noisy example; "
            f"{per_class} clean per class is too many for class {c}, which has {counts[c]} "
            f"examples ({short.size} classes affected)",
        )
    rs = np.random.RandomState([_SPLIT_STREAM, seed])
    clean = []
    for c in range(num_classes):  # Class order, so the draw is a function of the seed only.
        idx = np.flatnonzero(labels == c)
        clean.append(idx[rs.permutation(idx.size)[:per_class]])
    clean_idx = np.sort(np.concatenate(clean))
    is_clean = np.zeros(n, bool)
    is_clean[clean_idx] = True
    return clean_idx.astype(np.int64), np.flatnonzero(~is_clean).astype(np.int64)
