"""Label-noise models: transition matrices, the seeded corruption draw, realised-noise reports."""

from __future__ import annotations

import numpy as np

from ebomlc_jax import errors

NOISE_KINDS = ("uniform", "flip", "pair")

# Seed of the flip map in the MW-Net loader (used by MLC and EBOMLC): one map for all run seeds.
_FLIP_MAP_SEED = 1


def flip_map(num_classes: int) -> np.ndarray:
    """Class i -> its one fixed wrong class, drawn as the released loader does (seed 1)."""
    _check_num_classes(num_classes)
    rs = np.random.RandomState(_FLIP_MAP_SEED)
    classes = np.arange(num_classes)
    # One legacy `choice` per class, in class order: that sequence of draws is the map.
    return np.array([rs.choice(classes[classes != i]) for i in range(num_classes)], np.int64)


def transition_matrix(
    kind: str, rate: float, num_classes: int, *, includes_true_class: bool = True
) -> np.ndarray:
    """[K, K] row-stochastic matrix C with C[i, j] = P(noisy label j | true label i)."""
    check_kind_and_rate(kind, rate)
    _check_num_classes(num_classes)
    k, rate = num_classes, float(rate)
    eye = np.eye(k)
    if kind == "uniform":
        if includes_true_class:
            # MW-Net/MLC/EBOMLC code: the uniform draw may return the true class, so the
            # realised flip rate is rate * (K - 1) / K. rate * (1 / K), not rate / K: the
            # last bits of C move the cdf, and so the drawn labels, of the legacy draw.
            return rate * np.full((k, k), 1.0 / k) + (1.0 - rate) * eye
        # The paper's text: "flipped uniformly to another class"; realised rate is `rate`.
        return (1.0 - rate) * eye + rate / (k - 1) * (1.0 - eye)
    target = flip_map(k) if kind == "flip" else (np.arange(k) + 1) % k
    c = (1.0 - rate) * eye
    c[np.arange(k), target] += rate
    return c


def check_kind_and_rate(kind: str, rate: float) -> None:
    """Raises ConfigError unless kind is in NOISE_KINDS and rate is a number in [0, 1]."""
    if kind not in NOISE_KINDS:
        raise errors.allowed("noise.kind", kind, NOISE_KINDS)
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.floating | np.integer):
        raise errors.allowed("noise.rate", rate, "a number in [0, 1]")
    if not 0.0 <= rate <= 1.0:  # Also rejects NaN.
        raise errors.allowed("noise.rate", rate, "a number in [0, 1]")


def corrupt_labels(labels: np.ndarray, transition: np.ndarray, seed: int) -> np.ndarray:
    """Draws a noisy label per example from transition[y], bitwise as the legacy per-example loop.

    The loop being reproduced is `rs = RandomState(seed)` then `rs.choice(K, p=transition[y])`
    for each label in the order given. Legacy `choice` draws one `random_sample()` u and returns
    `searchsorted(cdf / cdf[-1], u, side="right")` with `cdf = p.cumsum()`, so drawing all u at
    once and searching each example's own row's cdf gives the same labels.
    """
    labels = np.asarray(labels)
    transition = np.asarray(transition, dtype=np.float64)
    k = transition.shape[0] if transition.ndim == 2 else -1
    if transition.shape != (k, k) or k < 1:
        raise errors.ConfigError(
            f"transition must be a square [K, K] matrix, got {transition.shape}"
        )
    if (transition < 0).any() or not np.allclose(transition.sum(1), 1.0, atol=1e-8):
        raise errors.ConfigError("transition rows must be probability vectors (>= 0, sum to 1)")
    _check_labels(labels, k)
    _check_seed(seed)
    u = np.random.RandomState(seed).random_sample(labels.shape[0])
    cdf = np.cumsum(transition, axis=1)
    cdf /= cdf[:, -1:]
    noisy = np.empty(labels.shape[0], np.int32)
    for c in range(k):  # A loop over classes, not examples.
        rows = labels == c
        noisy[rows] = np.searchsorted(cdf[c], u[rows], side="right")
    return noisy


def noise_report(
    true_labels: np.ndarray, noisy_labels: np.ndarray, num_classes: int, nominal_rate: float
) -> dict:
    """Realised noise: fraction of labels changed and the empirical row-normalised transition."""
    true_labels, noisy_labels = np.asarray(true_labels), np.asarray(noisy_labels)
    if true_labels.shape != noisy_labels.shape:
        raise errors.ConfigError(
            f"true and noisy labels differ in shape: {true_labels.shape} vs {noisy_labels.shape}"
        )
    _check_labels(true_labels, num_classes)
    _check_labels(noisy_labels, num_classes)
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (true_labels, noisy_labels), 1)
    totals = counts.sum(1, keepdims=True)
    # A class absent from the set gets a zero row rather than NaNs (the report must be JSON).
    empirical = counts / np.maximum(totals, 1)
    realised = float(np.mean(true_labels != noisy_labels)) if true_labels.size else 0.0
    return {
        "nominal_rate": float(nominal_rate),
        "realised_rate": realised,
        "transition": empirical.tolist(),
    }


def _check_num_classes(num_classes: int) -> None:
    """Noise needs at least two classes to move a label anywhere."""
    if not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise errors.allowed("num_classes", num_classes, "an integer >= 2")


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    """Labels must be a 1-D integer array with values in [0, num_classes)."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise errors.ConfigError(
            f"labels must be a 1-D integer array, got {labels.dtype}{labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise errors.allowed(
            "labels", f"range [{labels.min()}, {labels.max()}]", f"integers in [0, {num_classes})"
        )


def _check_seed(seed: int) -> None:
    """NumPy's legacy RandomState accepts integer seeds in [0, 2**32)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise errors.allowed("seed", seed, "an integer in [0, 2**32)")
