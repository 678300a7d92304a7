"""Per-epoch evaluation on the device: test accuracy, the clean set, the meta model's corrections.

- test accuracy of the main model (eval mode: running BN statistics);
- accuracy and Eq. 2 loss of the main model on the clean set D (the released code picks the
  reported epoch by accuracy on clean-labelled training images);
- the meta model's label-correction accuracy on the noisy set D' against the true labels, and
  its confusion matrix (rows: true label, columns: argmax of g(h(x'), y')). Dropout is off; the
  meta model's BatchNorm uses each evaluation batch's statistics (it keeps no running averages).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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


class Evaluator:
    """Compiled evaluation of one run (or of vmapped seeds) on device-resident data."""

    def __init__(self, method: Method, runner, batch_size: int, meta_correction: bool = True):
        self.method = method
        self.runner = runner
        self.meta = meta_correction and method.uses_meta
        d = runner.datas[0]
        b = min(batch_size, d.num_noisy, d.num_clean, len(d.test_labels))
        self.test_idx = index_batches(len(d.test_labels), b)
        self.clean_idx = index_batches(d.num_clean, b)
        self.noisy_idx = index_batches(d.num_noisy, b)
        self.num_classes = d.num_classes
        fn = (
            jax.vmap(self._evaluate, in_axes=(0, None, 0, None))
            if runner.vmapped
            else (self._evaluate)
        )
        self._fn = jax.jit(fn)

    def _classify(self, state, images, labels, mask):
        x = normalize(images, self.runner.shared["mean"], self.runner.shared["std"])
        logits = self.method.predict(state, x)[0]
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
        hits = jnp.argmax(logits, axis=-1) == labels
        return jnp.stack([jnp.sum(hits * mask), jnp.sum(nll * mask)])

    def _evaluate(self, state, shared, per_seed, test):
        def scan_sum(fn, batches):
            """sum_b fn(*batch_b), one batch at a time (bounded device memory)."""
            first = fn(*jax.tree.map(lambda x: x[0], batches))
            rest = jax.tree.map(lambda x: x[1:], batches)
            return jax.lax.scan(lambda acc, b: (acc + fn(*b), None), first, rest)[0]

        idx, mask = self.test_idx
        test_sums = scan_sum(
            lambda i, m: self._classify(state, test["images"][i], test["labels"][i], m),
            (idx, mask),
        )
        idx, mask = self.clean_idx
        clean_sums = scan_sum(
            lambda i, m: self._classify(
                state,
                jnp.take(shared["images"], per_seed["clean_index"][i], axis=0),
                per_seed["clean_label"][i],
                m,
            ),
            (idx, mask),
        )
        out = {
            "test_accuracy": test_sums[0] / self.test_idx[1].sum(),
            "clean_accuracy": clean_sums[0] / self.clean_idx[1].sum(),
            "clean_loss": clean_sums[1] / self.clean_idx[1].sum(),
        }
        if self.meta:
            idx, mask = self.noisy_idx

            def confusion(i, m):
                images = jnp.take(shared["images"], per_seed["noisy_index"][i], axis=0)
                x = normalize(images, shared["mean"], shared["std"])
                probs = self.method.correct_labels(state, x, per_seed["noisy_label"][i])
                pred = jax.nn.one_hot(jnp.argmax(probs, -1), self.num_classes)
                true = jax.nn.one_hot(per_seed["noisy_true_label"][i], self.num_classes)
                return (true * m[:, None]).T @ pred

            counts = scan_sum(confusion, (idx, mask))
            out["meta_correction_accuracy"] = jnp.trace(counts) / self.noisy_idx[1].sum()
            out["meta_confusion"] = counts
        return out

    def __call__(self, state: PyTree) -> dict[str, np.ndarray]:
        """Evaluation scalars (and the confusion counts); leading seed axis when vmapped."""
        r = self.runner
        return jax.device_get(self._fn(state, r.shared, r.per_seed, r.test))
