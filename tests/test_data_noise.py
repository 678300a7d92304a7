"""Noise models: flip maps, transition matrices, the corruption draw and the realised rates."""

import json

import numpy as np
import pytest

from ebomlc_jax.data import noise
from ebomlc_jax.errors import ConfigError

# The released loader's maps (class i -> map[i], docs/reference_notes.md section 1); flip_map
# must derive them.
LISTED_FLIP_MAP_10 = [6, 9, 6, 0, 0, 1, 8, 6, 2, 4]
# fmt: off
LISTED_FLIP_MAP_100 = [
    38, 13, 73, 10, 76, 6, 80, 65, 17, 1, 77, 72, 6, 26, 51, 21, 19, 85, 11, 29, 30, 14, 51, 69,
    88, 88, 95, 97, 87, 13, 9, 7, 64, 62, 22, 58, 1, 0, 61, 82, 8, 89, 13, 48, 73, 30, 72, 3, 71,
    21, 49, 58, 3, 69, 24, 43, 77, 26, 52, 81, 41, 83, 15, 65, 69, 25, 99, 88, 7, 26, 25, 22, 9,
    67, 23, 27, 37, 57, 84, 38, 8, 32, 34, 10, 23, 15, 88, 25, 71, 93, 74, 62, 46, 32, 88, 23, 55,
    65, 77, 3,
]
# fmt: on


@pytest.mark.parametrize("k, listed", [(10, LISTED_FLIP_MAP_10), (100, LISTED_FLIP_MAP_100)])
def test_flip_map_matches_reference_notes(k, listed):
    np.testing.assert_array_equal(noise.flip_map(k), listed)


def test_flip_map_matches_global_state_draw_of_released_loader():
    # The released loader seeds NumPy's global state; that must give the same map.
    saved = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(1)  # noqa: NPY002
        classes = np.arange(10)
        legacy = [np.random.choice(classes[classes != i]) for i in range(10)]  # noqa: NPY002
    finally:
        np.random.set_state(saved)  # noqa: NPY002
    np.testing.assert_array_equal(noise.flip_map(10), legacy)
    assert all(noise.flip_map(100) != np.arange(100))


@pytest.mark.parametrize("kind", noise.NOISE_KINDS)
@pytest.mark.parametrize("includes_true_class", [True, False])
@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_transition_rows_sum_to_one(kind, includes_true_class, rate):
    for k in (2, 10, 100):
        c = noise.transition_matrix(kind, rate, k, includes_true_class=includes_true_class)
        assert c.shape == (k, k)
        assert (c >= 0).all()
        np.testing.assert_allclose(c.sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("k", [10, 100])
def test_transitions_bitwise_equal_released_formulas(k):
    # The released loader's matrices, written out: equal bit for bit, so the draw is too.
    for r in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]:
        uniform = r * np.full((k, k), 1 / k) + (1 - r) * np.eye(k)
        assert np.array_equal(noise.transition_matrix("uniform", r, k), uniform)
        flip = np.eye(k) * (1 - r)
        flip[np.arange(k), noise.flip_map(k)] = r
        assert np.array_equal(noise.transition_matrix("flip", r, k), flip)


def test_transition_matrix_entries():
    k, r = 10, 0.4
    np.testing.assert_allclose(
        noise.transition_matrix("uniform", r, k), r / k + (1 - r) * np.eye(k)
    )
    paper = noise.transition_matrix("uniform", r, k, includes_true_class=False)
    np.testing.assert_allclose(np.diag(paper), 1 - r)
    np.testing.assert_allclose(paper[0, 1:], r / (k - 1))
    flip = noise.transition_matrix("flip", r, k)
    np.testing.assert_allclose(flip[np.arange(k), LISTED_FLIP_MAP_10], r)
    pair = noise.transition_matrix("pair", r, k)
    np.testing.assert_allclose(pair[np.arange(k), (np.arange(k) + 1) % k], r)


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("rate", [0.2, 0.4, 0.8])
def test_uniform_realised_rate(k, rate):
    labels = np.arange(49_000) % k
    with_true = noise.transition_matrix("uniform", rate, k, includes_true_class=True)
    noisy = noise.corrupt_labels(labels, with_true, seed=1)
    assert abs(np.mean(noisy != labels) - rate * (k - 1) / k) < 0.01
    without_true = noise.transition_matrix("uniform", rate, k, includes_true_class=False)
    noisy = noise.corrupt_labels(labels, without_true, seed=1)
    assert abs(np.mean(noisy != labels) - rate) < 0.01


@pytest.mark.parametrize("kind", ["flip", "pair"])
@pytest.mark.parametrize("k", [10, 100])
def test_flip_and_pair_move_only_along_their_map(kind, k):
    labels = np.arange(20_000) % k
    noisy = noise.corrupt_labels(labels, noise.transition_matrix(kind, 0.4, k), seed=3)
    target = noise.flip_map(k) if kind == "flip" else (np.arange(k) + 1) % k
    changed = noisy != labels
    np.testing.assert_array_equal(noisy[changed], target[labels[changed]])
    assert abs(changed.mean() - 0.4) < 0.02


def _legacy_loop(labels, transition, seed):
    rs = np.random.RandomState(seed)
    return np.array([rs.choice(transition.shape[0], p=transition[y]) for y in labels])


@pytest.mark.parametrize(
    "kind, rate, k, includes_true_class",
    [
        ("uniform", 0.4, 10, True),
        ("uniform", 0.8, 100, False),
        ("flip", 0.4, 100, True),
        ("pair", 0.3, 10, True),
        ("uniform", 0.0, 10, True),
    ],
)
def test_vectorised_corruption_equals_legacy_loop(kind, rate, k, includes_true_class):
    labels = np.random.RandomState(7).randint(0, k, size=3000)
    c = noise.transition_matrix(kind, rate, k, includes_true_class=includes_true_class)
    np.testing.assert_array_equal(
        noise.corrupt_labels(labels, c, seed=5), _legacy_loop(labels, c, 5)
    )


def test_corruption_is_seeded():
    labels = np.arange(5000) % 10
    c = noise.transition_matrix("uniform", 0.5, 10)
    a = noise.corrupt_labels(labels, c, seed=0)
    np.testing.assert_array_equal(a, noise.corrupt_labels(labels, c, seed=0))
    assert (a != noise.corrupt_labels(labels, c, seed=1)).any()
    assert a.dtype == np.int32


def test_noise_report():
    true = np.array([0, 0, 1, 1, 2, 2])
    noisy = np.array([0, 1, 1, 1, 0, 2])
    report = noise.noise_report(true, noisy, 4, 0.5)
    assert report["nominal_rate"] == 0.5
    assert report["realised_rate"] == pytest.approx(2 / 6)
    assert report["transition"][0] == [0.5, 0.5, 0.0, 0.0]
    assert report["transition"][3] == [0.0, 0.0, 0.0, 0.0]  # Absent class: zeros, not NaN.
    json.dumps(report)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "0.2", None])
def test_bad_rate(rate):
    with pytest.raises(ConfigError, match=r"noise\.rate.*allowed values: a number in \[0, 1\]"):
        noise.transition_matrix("uniform", rate, 10)


def test_bad_kind():
    with pytest.raises(ConfigError, match=r"noise\.kind='gaussian'.*'uniform', 'flip', 'pair'"):
        noise.transition_matrix("gaussian", 0.2, 10)


def test_bad_corruption_inputs():
    c = noise.transition_matrix("uniform", 0.2, 10)
    with pytest.raises(ConfigError, match="labels"):
        noise.corrupt_labels(np.array([0, 10]), c, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        noise.corrupt_labels(np.array([0, 1]), c, seed=-1)
    with pytest.raises(ConfigError, match="sum to 1"):
        noise.corrupt_labels(np.array([0, 1]), c * 2, seed=0)
