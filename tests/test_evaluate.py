"""Evaluation against a computation by hand: test and clean accuracy, clean loss and the meta
model's correction counts and diagnostics of a small fixed model, on sets that the evaluation
batch does not divide; the diagnostics of meta models that copy, shift back or partly change the
labels they are given; and the wrap-and-mask batching itself."""

import dataclasses
import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config
from helpers import build

from ebomlc_jax import evaluate, logs, train
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


def diagnostics_by_hand(true, given, pred):
    """The four diagnostics from per-example labels (NumPy, one example at a time)."""
    wrong, changed = given != true, pred != given

    def share(hits):  # an empty group: undefined (NaN); nothing changed: precision 0
        return np.mean(hits) if hits.size else np.nan

    return {
        "meta_accuracy_on_mislabelled": share(pred[wrong] == true[wrong]),
        "meta_accuracy_on_correct": share(pred[~wrong] == true[~wrong]),
        "meta_change_rate": share(changed),
        "meta_change_precision": share(pred[changed] == true[changed]) if changed.any() else 0.0,
    }


def group_counts_by_hand(true, given, pred, k):
    """The mislabelled / correct confusions and the changed / changed-to-true counts."""
    wrong = given != true
    mislabelled, correct = np.zeros((k, k)), np.zeros((k, k))
    np.add.at(mislabelled, (true[wrong], pred[wrong]), 1)
    np.add.at(correct, (true[~wrong], pred[~wrong]), 1)
    return {
        "meta_confusion_mislabelled": mislabelled,
        "meta_confusion_correct": correct,
        "meta_confusion": mislabelled + correct,
        "meta_changed": np.sum(pred != given),
        "meta_changed_to_true": np.sum((pred != given) & (pred == true)),
    }


def by_hand(method, data, state):
    """Accuracies, clean loss, confusion counts and the meta model's diagnostics from model calls
    on host arrays, float64."""
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
    pred = np.zeros(n, np.int64)
    for start in range(0, len(order), EVAL_BATCH):
        rows = order[start : start + EVAL_BATCH]
        images = normalize(data.images[data.noisy_index[rows]], mean, std)
        probs = method.correct_labels(state, images, data.noisy_label[rows])
        counted = start + np.arange(len(rows)) < n
        pred[rows[counted]] = np.argmax(probs, -1)[counted]
    true, given = data.noisy_true_label, data.noisy_label
    return {
        "test_accuracy": np.mean(test.argmax(-1) == data.test_labels),
        "clean_accuracy": np.mean(clean.argmax(-1) == data.clean_label),
        "clean_loss": -np.mean(logp[np.arange(len(data.clean_label)), data.clean_label]),
        **group_counts_by_hand(true, given, pred, data.num_classes),
        **diagnostics_by_hand(true, given, pred),
    }


DIAGNOSTICS = (
    "meta_accuracy_on_mislabelled",
    "meta_accuracy_on_correct",
    "meta_change_rate",
    "meta_change_precision",
)
COUNTS = (
    "meta_confusion",
    "meta_confusion_mislabelled",
    "meta_confusion_correct",
    "meta_changed",
    "meta_changed_to_true",
)


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
    for key in COUNTS:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for key in DIAGNOSTICS:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert got["meta_confusion"].sum() == data.num_noisy
    assert got["meta_confusion_mislabelled"].sum() == np.sum(
        data.noisy_label != data.noisy_true_label
    )
    assert got["meta_correction_accuracy"] == pytest.approx(
        np.trace(want["meta_confusion"]) / data.num_noisy
    )
    assert 0.05 < got["test_accuracy"] < 0.95  # a model that is neither all right nor all wrong


NUM_CLASSES = 10  # digits


def relabelling(method, rule):
    """`method` with a meta model that answers one_hot(rule(given label)) whatever the image: its
    numbers on D' follow from the given and true labels alone."""

    class Relabel(type(method)):
        def correct_labels(self, state, images, labels):
            return jax.nn.one_hot(rule(labels), NUM_CLASSES)

    return Relabel(
        **{f.name: getattr(method, f.name) for f in dataclasses.fields(method) if f.init}
    )


def copy_label(given):
    return given


def shift_back(given):
    return (given - 1) % NUM_CLASSES


def change_odd(given):
    return jnp.where(given % 2 == 1, (given + 1) % NUM_CLASSES, given)


def with_given_labels(data, relabel):
    """`data` with the given labels of D' set to `relabel(true labels)`."""
    given = relabel(np.asarray(data.per_seed["noisy_true_label"]))
    return dataclasses.replace(
        data, per_seed={**data.per_seed, "noisy_label": jnp.asarray(given, jnp.int32)}
    )


def shifted_by_one(true):
    """Given label true + 1 on every third example of D', the true label elsewhere."""
    return np.where(np.arange(len(true)) % 3 == 0, (true + 1) % NUM_CLASSES, true)


def no_noise(true):
    return true


RULE_BATCH = 128  # 1298 = 10 x 128 + 18: the last batch repeats 110 examples, masked


@pytest.mark.parametrize(
    "rule, relabel, expected",
    [
        # A copier: corrects none of the wrong labels, keeps every right one, changes nothing.
        (copy_label, None, {"meta_accuracy_on_mislabelled": 0.0, "meta_accuracy_on_correct": 1.0,
                             "meta_change_rate": 0.0, "meta_change_precision": 0.0}),
        # Every wrong label is true + 1: shifting back corrects all of them and breaks the rest.
        (shift_back, shifted_by_one, {"meta_accuracy_on_mislabelled": 1.0,
                                      "meta_accuracy_on_correct": 0.0, "meta_change_rate": 1.0,
                                      "meta_change_precision": 433 / 1298}),
        # On the uniform noise: odd labels move up by one, even ones stay.
        (change_odd, None, None),
        # No wrong label at all (noise rate 0): nothing to measure there, NaN rather than 0.
        (copy_label, no_noise, {"meta_accuracy_on_mislabelled": np.nan,
                                "meta_accuracy_on_correct": 1.0, "meta_change_rate": 0.0,
                                "meta_change_precision": 0.0}),
    ],
    ids=["copier", "shift-back", "change-odd", "copier-without-noise"],
)  # fmt: skip
def test_meta_diagnostics_of_meta_models_that_follow_a_rule(rule, relabel, expected):
    method, runner = setup()
    data = with_given_labels(runner.data, relabel) if relabel else runner.data
    got = evaluate.Evaluator(relabelling(method, rule), data, RULE_BATCH)(runner.init_state())
    true = np.asarray(data.per_seed["noisy_true_label"])
    given = np.asarray(data.per_seed["noisy_label"])
    pred = np.asarray(rule(given))
    assert len(true) == 1298 and len(true) % RULE_BATCH
    want = {
        **group_counts_by_hand(true, given, pred, NUM_CLASSES),
        **diagnostics_by_hand(true, given, pred),
    }
    for key in COUNTS:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for key in DIAGNOSTICS:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12, err_msg=key)
        if expected is not None:
            np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-12, err_msg=key)
    assert got["meta_correction_accuracy"] == pytest.approx(np.mean(pred == true), abs=1e-12)
    if rule is copy_label:  # all of D' scores 1 - realised noise: correction and copying alike
        assert got["meta_correction_accuracy"] == pytest.approx(np.mean(given == true))
        assert np.trace(got["meta_confusion_mislabelled"]) == 0
    if rule is change_odd:  # neither extreme: each number strictly inside (0, 1)
        assert all(0 < got[key] < 1 for key in DIAGNOSTICS), {k: got[k] for k in DIAGNOSTICS}


class Recorder:
    """A metric writer that keeps what it is given."""

    def __init__(self):
        self.rows = []

    def write_scalars(self, step, scalars):
        self.rows.append((step, dict(scalars)))

    def flush(self):
        pass


def test_logging_leaves_undefined_diagnostics_out_and_keeps_whole_history_lines(tmp_path):
    """What train.py logs of an evaluation without wrong labels (noise rate 0)."""
    ev = {
        "test_accuracy": np.float32(0.5),
        "clean_accuracy": np.float32(0.5),
        "clean_loss": np.float32(1.0),
        "meta_correction_accuracy": np.float32(0.75),
        "meta_confusion": np.array([[3.0, 1.0], [0.0, 0.0]]),
        "meta_confusion_mislabelled": np.zeros((2, 2)),
        "meta_confusion_correct": np.array([[3.0, 1.0], [0.0, 0.0]]),
        "meta_changed": np.int32(1),
        "meta_changed_to_true": np.int32(0),
        "meta_accuracy_on_mislabelled": np.float64(np.nan),
        "meta_accuracy_on_correct": np.float64(0.75),
        "meta_change_rate": np.float64(0.25),
        "meta_change_precision": np.float64(0.0),
    }
    history = tmp_path / "meta_confusion_history.jsonl"
    history.write_text('{"epoch": 1, "num_classes": 2, "misl')  # cut by a kill mid-write
    config, writer = tiny_config.get_config(), Recorder()
    for epoch in (0, 1, 1):  # epoch 2 twice: a resumed run redoes it
        meas = {"G": np.zeros(3)}
        train._log_epoch(writer, tmp_path, meas, ev, train._fresh_record(), epoch, 3, config, True)
    step, scalars = writer.rows[-1]
    assert step == 6 and scalars["eval/epoch"] == 2
    assert "eval/meta_accuracy_on_mislabelled" not in scalars  # undefined: not logged as 0
    assert scalars["eval/meta_accuracy_on_correct"] == 0.75
    assert scalars["eval/meta_change_precision"] == 0.0
    lines = history.read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 2]
    assert json.loads(lines[0]) == {
        "epoch": 1,
        "num_classes": 2,
        "mislabelled": [[0, 0], [0, 0]],
        "correct": [[3, 1], [0, 0]],
        "changed": 1,
        "changed_to_true": 0,
    }
    summary = {
        "method": "ebomlc", "variant": "paper", "dataset": "digits", "noise_kind": "uniform",
        "noise_rate": 0.0, "realised_noise_rate": 0.0, "seed": 0, "final_test_accuracy": 0.5,
        "test_accuracy_at_best_clean": 0.5, "best_clean_epoch": 1, "best_clean_accuracy": 0.5,
        "final_meta_correction_accuracy": 0.75, "final_meta_accuracy_on_mislabelled": None,
        "final_meta_accuracy_on_correct": 0.75, "final_meta_change_rate": 0.25,
        "final_meta_change_precision": 0.0, "wall_time_s": 1.0, "steps_per_sec": 1.0,
        "run_dir": "r",
    }  # fmt: skip
    screen = logs.summary_screen(summary)
    assert re.search(r"meta on mislabelled +n/a corrected", screen), screen
    assert re.search(r"meta on correct labels +75.00% kept", screen), screen
    assert "25.00% of D', 0.00% of them to the true label" in screen


def test_two_seeds_evaluate_as_each_alone():
    method, runner, state = trained((0, 1))
    both = evaluate.Evaluator(method, runner.data, EVAL_BATCH)(state)
    for i, seed in enumerate((0, 1)):
        m1, r1 = setup((seed,))
        one = jax.tree.map(lambda x, i=i: x[i], state)
        alone = evaluate.Evaluator(m1, r1.data, EVAL_BATCH)(one)
        for key, value in alone.items():
            np.testing.assert_allclose(both[key][i], value, rtol=1e-5, err_msg=key)
