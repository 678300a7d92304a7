"""Evaluation against a computation by hand: test and clean accuracy, clean loss and the meta
model's correction counts of a small fixed model, on sets that the evaluation batch does not
divide; and the wrap-and-mask batching itself."""

import functools

import jax
import numpy as np
import pytest
import tiny_config
from helpers import build

from ebomlc_jax import evaluate
from ebomlc_jax.data import normalize

EVAL_BATCH = 100  # digits: 359 test, 140 clean and 1298 noisy images; none a multiple of 100


def test_index_batches_wraps_the_last_batch_and_masks_the_repeats():
    idx, mask = evaluate.index_batches(7, 3)
    np.testing.assert_array_equal(idx, [[0, 1, 2], [3, 4, 5], [6, 0, 1]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 1], [1, 0, 0]])
    idx, mask = evaluate.index_batches(6, 3)  # divides: no wrap, nothing masked
    np.testing.assert_array_equal(idx.ravel(), np.arange(6))
    assert mask.all()


@functools.cache
def setup(seeds=(0,)):
    """The tiny config's EBOMLC and its runner for these seeds."""
    return build(tiny_config.get_config(), seeds)


@functools.cache
def trained(seeds=(0,)):
    """After one epoch (BN statistics and meta model away from their initial values)."""
    method, runner = setup(seeds)
    state, _ = runner.run_epoch(runner.init_state(), 0)
    return method, runner, jax.device_get(state)


def by_hand(method, data, state):
    """Accuracies, clean loss and confusion counts from model calls on host arrays, float64."""
    mean, std = data.mean, data.std

    def logits(images):
        return np.asarray(method.predict(state, normalize(images, mean, std)), np.float64)

    test = logits(data.test_images)
    clean = logits(data.images[data.clean_index])
    z = clean - clean.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    n = data.num_noisy
    # The meta model's BN normalises with each evaluation batch: batches of EVAL_BATCH in order,
    # the last one completed with the first examples again, which are not counted twice.
    order = np.concatenate([np.arange(n), np.arange(n)])[: -(-n // EVAL_BATCH) * EVAL_BATCH]
    confusion = np.zeros((data.num_classes, data.num_classes))
    for start in range(0, len(order), EVAL_BATCH):
        rows = order[start : start + EVAL_BATCH]
        images = normalize(data.images[data.noisy_index[rows]], mean, std)
        probs = method.correct_labels(state, images, data.noisy_label[rows])
        counted = start + np.arange(len(rows)) < n
        np.add.at(
            confusion,
            (data.noisy_true_label[rows][counted], np.argmax(probs, -1)[counted]),
            1,
        )
    return {
        "test_accuracy": np.mean(test.argmax(-1) == data.test_labels),
        "clean_accuracy": np.mean(clean.argmax(-1) == data.clean_label),
        "clean_loss": -np.mean(logp[np.arange(len(data.clean_label)), data.clean_label]),
        "meta_confusion": confusion,
    }


def test_evaluation_equals_a_computation_by_hand():
    method, runner, state = trained()
    got = evaluate.Evaluator(method, runner.data, EVAL_BATCH)(state)
    data = runner.datas[0]
    want = by_hand(method, data, state)
    assert len(data.test_labels) % EVAL_BATCH and data.num_clean % EVAL_BATCH
    assert data.num_noisy % EVAL_BATCH
    # Argmaxes of the same float32 logits: equal; the loss to float32 rounding.
    assert got["test_accuracy"] == pytest.approx(want["test_accuracy"], abs=1e-9)
    assert got["clean_accuracy"] == pytest.approx(want["clean_accuracy"], abs=1e-9)
    assert got["clean_loss"] == pytest.approx(want["clean_loss"], rel=1e-5)
    np.testing.assert_array_equal(got["meta_confusion"], want["meta_confusion"])
    assert got["meta_confusion"].sum() == data.num_noisy
    assert got["meta_correction_accuracy"] == pytest.approx(
        np.trace(want["meta_confusion"]) / data.num_noisy
    )
    assert 0.05 < got["test_accuracy"] < 0.95  # a model that is neither all right nor all wrong


def test_two_seeds_evaluate_as_each_alone():
    method, runner, state = trained((0, 1))
    both = evaluate.Evaluator(method, runner.data, EVAL_BATCH)(state)
    for i, seed in enumerate((0, 1)):
        m1, r1 = setup((seed,))
        one = jax.tree.map(lambda x, i=i: x[i], state)
        alone = evaluate.Evaluator(m1, r1.data, EVAL_BATCH)(one)
        for key, value in alone.items():
            np.testing.assert_allclose(both[key][i], value, rtol=1e-5, err_msg=key)
