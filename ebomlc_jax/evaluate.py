"""Per-epoch evaluation on the device: test accuracy, the clean set, the meta model's corrections;
and the per-example pass over a whole set that methods' epoch hooks read.

- test accuracy of the method's prediction (eval mode: running BN statistics), and of its extra
  heads (e.g. each of two networks) as `test_accuracy_<name>`;
- accuracy and Eq. 2 loss of the prediction on the clean set D (the released code picks the
  reported epoch by accuracy on clean-labelled training images);
- for methods with a meta model: its label-correction accuracy on the noisy set D' against the
  true labels, and its confusion matrix (rows: true label, columns: argmax of g(h(x'), y')),
  also apart for the examples whose given label y' is wrong and right; how many argmaxes
  differ from y' and how many of those are the true label; and from these the diagnostics that
  tell correcting from copying y' (`analysis.runs.meta_diagnostics`). Dropout is off; the meta
  model's BatchNorm uses each evaluation batch's statistics (it keeps no running averages).

Sets are cut into batches by `index_batches` (in order, the last batch filled by wrapping and
masked) and summed in one compiled `lax.scan` per set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ebomlc_jax import bilevel
from ebomlc_jax.analysis.runs import meta_diagnostics
from ebomlc_jax.data import device as dd
from ebomlc_jax.data.sources import normalize
from ebomlc_jax.methods import Method

PyTree = Any


def index_batches(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """([num_batches, batch] indices, mask): 0..n-1 in order, the last batch filled by wrapping.

    Wrapping (instead of zero padding) keeps every row a real example, so batch statistics of
    the meta model's BatchNorm are not polluted; the mask stops repeats from being counted.
    """
    num = -(-n // batch_size)
    idx = np.resize(np.arange(n, dtype=np.int32), num * batch_size)
    mask = np.arange(num * batch_size) < n
    return idx.reshape(num, batch_size), mask.reshape(num, batch_size)


def set_batch(shared: dd.Arrays, per_seed: dd.Arrays, which: str, rows: jax.Array) -> dd.Arrays:
    """Normalised, unaugmented batch of positions `rows` in D' ("noisy") or D ("clean")."""
    raw = (
        dd.gather_noisy(shared, per_seed, rows)
        if which == "noisy"
        else {**dd.gather_clean(shared, per_seed, rows), "index": rows}
    )
    return {**raw, "image": normalize(raw["image"], shared["mean"], shared["std"])}


def per_example_pass(
    method: Method, data: dd.DeviceData, which: str, batch_size: int
) -> Callable[[PyTree, dd.Arrays, dd.Arrays], dict[str, jax.Array]]:
    """(state, shared, per_seed) -> `method.per_example` over all of `which`, one row per example
    in set order (a `lax.scan` over `index_batches`; the wrapped repeats are dropped)."""
    n = data.num_noisy if which == "noisy" else data.num_clean
    idx, _ = index_batches(n, min(batch_size, n))

    def run(state, shared, per_seed):
        def body(_, rows):
            return None, method.per_example(state, set_batch(shared, per_seed, which, rows))

        _, out = jax.lax.scan(body, None, idx)
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:n], out)

    return run


class Evaluator:
    """Compiled evaluation of one run (or of several seeds run together) on device-resident data.

    Takes the method and the data; `evaluator(state)` evaluates a state.
    """

    def __init__(
        self, method: Method, data: dd.DeviceData, batch_size: int, meta_correction: bool = True
    ):
        self.method, self.data = method, data
        n_test = int(data.test["labels"].shape[0])
        b = min(batch_size, data.num_noisy, data.num_clean, n_test)
        # kind -> (per-batch sum function, [num_batches, b] indices, mask)
        self.kinds = {
            "test": (self._test_sums, *index_batches(n_test, b)),
            "clean": (self._clean_sums, *index_batches(data.num_clean, b)),
        }
        if meta_correction and method.uses_meta:
            self.kinds["noisy"] = (self._corrections, *index_batches(data.num_noisy, b))
        self._scan = jax.jit(data.over_seeds(self._scan_all, (0, None, 0, None)))

    def compile(self, state: PyTree) -> None:
        """Compile the evaluation of states like `state` now."""
        d = self.data
        self._scan = self._scan.lower(state, d.shared, d.per_seed, d.test).compile()

    # -- per-batch sums: (state, shared, per_seed, test, indices, mask) -> arrays
    def _classify(self, state, images, labels, mask, heads=False):
        x = normalize(images, self.data.shared["mean"], self.data.shared["std"])
        logits = {"": self.method.predict(state, x)}
        if heads:
            logits.update(self.method.extra_predictions(state, x))
        sums = {}
        for name, z in logits.items():
            nll = bilevel.cross_entropies(z, labels)
            hits = jnp.argmax(z, axis=-1) == labels
            sums[name] = jnp.stack([jnp.sum(hits * mask), jnp.sum(nll * mask)])
        return sums

    def _test_sums(self, state, shared, per_seed, test, i, m):
        return self._classify(state, test["images"][i], test["labels"][i], m, heads=True)

    def _clean_sums(self, state, shared, per_seed, test, i, m):
        images = jnp.take(shared["images"], per_seed["clean_index"][i], axis=0)
        return self._classify(state, images, per_seed["clean_label"][i], m)

    def _corrections(self, state, shared, per_seed, test, i, m):
        """Confusions of the mislabelled / correctly labelled rows, changed and changed-to-true
        counts; masked (wrapped) rows count nowhere."""
        batch = set_batch(shared, per_seed, "noisy", i)
        given, true = batch["label"], batch["true_label"]
        pred = jnp.argmax(self.method.correct_labels(state, batch["image"], given), -1)
        k = self.data.num_classes
        one_hot_pred, one_hot_true = jax.nn.one_hot(pred, k), jax.nn.one_hot(true, k)
        wrong = given != true
        changed = m & (pred != given)
        return {
            "mislabelled": (one_hot_true * (m & wrong)[:, None]).T @ one_hot_pred,
            "correct": (one_hot_true * (m & ~wrong)[:, None]).T @ one_hot_pred,
            "changed": jnp.sum(changed, dtype=jnp.int32),
            "changed_to_true": jnp.sum(changed & (pred == true), dtype=jnp.int32),
        }

    def _scan_all(self, state, shared, per_seed, test):
        out = {}
        for kind, (fn, idx, mask) in self.kinds.items():
            first = fn(state, shared, per_seed, test, idx[0], mask[0])
            step = lambda acc, b, fn=fn: (  # noqa: E731
                jax.tree.map(jnp.add, acc, fn(state, shared, per_seed, test, *b)),
                None,
            )
            out[kind] = jax.lax.scan(step, first, (idx[1:], mask[1:]))[0]
        return out

    def __call__(self, state: PyTree) -> dict[str, np.ndarray]:
        """Evaluation scalars (and the confusion counts); leading seed axis with several seeds.

        With a meta model: `meta_confusion` (all of D'), `meta_confusion_mislabelled` and
        `meta_confusion_correct` (K x K counts), `meta_changed`, `meta_changed_to_true`, and
        `meta_correction_accuracy` with the four `analysis.runs.DIAGNOSTICS`.
        """
        d = self.data
        sums = jax.device_get(self._scan(state, d.shared, d.per_seed, d.test))
        count = {k: v[2].sum() for k, v in self.kinds.items()}
        out = {
            "test_accuracy": sums["test"][""][..., 0] / count["test"],
            "clean_accuracy": sums["clean"][""][..., 0] / count["clean"],
            "clean_loss": sums["clean"][""][..., 1] / count["clean"],
        }
        for name, head in sums["test"].items():
            if name:
                out[f"test_accuracy_{name}"] = head[..., 0] / count["test"]
        if "noisy" in sums:
            noisy = sums["noisy"]
            confusion = noisy["mislabelled"] + noisy["correct"]
            out["meta_correction_accuracy"] = (
                np.trace(confusion, axis1=-2, axis2=-1) / count["noisy"]
            )
            out["meta_confusion"] = confusion
            out["meta_confusion_mislabelled"] = noisy["mislabelled"]
            out["meta_confusion_correct"] = noisy["correct"]
            out["meta_changed"] = noisy["changed"]
            out["meta_changed_to_true"] = noisy["changed_to_true"]
            out.update(
                meta_diagnostics(
                    noisy["mislabelled"],
                    noisy["correct"],
                    noisy["changed"],
                    noisy["changed_to_true"],
                )
            )
        return out
