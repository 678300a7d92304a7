"""The noisy-label training data and the batch order shared by every batching path.

Every path (the host loop, tf.data, an on-device `lax.scan` epoch) takes its batch indices from
`epoch_batches` / `stream_batch`, so they all see the same batches in the same order. Indices
are positions inside the clean set D or the noisy set D', not into the full training split.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ebomlc_jax import errors
from ebomlc_jax.data import noise, sources, splits

SETS = ("noisy", "clean")
_BATCH_FIELDS = {"noisy": "data.batch_size", "clean": "data.clean_batch_size"}


@dataclasses.dataclass(frozen=True, eq=False)
class NoisyLabelData:
    """Train split with its clean/noisy partition and noisy labels, plus the test split."""

    images: np.ndarray  # uint8 [N_train, H, W, C], the whole training split
    clean_index: np.ndarray  # int [M], rows of `images` in the clean set D
    clean_label: np.ndarray  # int32 [M], true labels
    noisy_index: np.ndarray  # int [N'], rows of `images` in the noisy set D'
    noisy_label: np.ndarray  # int32 [N'], corrupted labels: the only labels training may use
    noisy_true_label: np.ndarray  # int32 [N'], true labels of D', for analysis only
    test_images: np.ndarray  # uint8 [N_test, H, W, C]
    test_labels: np.ndarray  # int32 [N_test]
    mean: np.ndarray  # float32 [C]
    std: np.ndarray  # float32 [C]
    num_classes: int
    noise: dict  # noise_report(...) plus the noise kind: JSON-serialisable

    @property
    def num_clean(self) -> int:
        """Size of the clean set D."""
        return int(self.clean_index.shape[0])

    @property
    def num_noisy(self) -> int:
        """Size of the noisy set D'."""
        return int(self.noisy_index.shape[0])


def build_data(
    dataset: str,
    *,
    seed: int,
    noise_kind: str,
    noise_rate: float,
    clean_fraction: float = 0.02,
    includes_true_class: bool = True,
    data_dir: str | None = None,
    download: bool = False,
) -> NoisyLabelData:
    """Loads `dataset`, splits off a balanced clean set and corrupts the labels of the rest."""
    if dataset not in sources.DATASETS:
        raise errors.allowed("data.dataset", dataset, sources.DATASETS)
    noise.check_kind_and_rate(noise_kind, noise_rate)  # Before the (possibly slow) load.
    src = sources.load_source(dataset, data_dir=data_dir, download=download)
    transition = noise.transition_matrix(
        noise_kind, noise_rate, src.num_classes, includes_true_class=includes_true_class
    )
    clean_idx, noisy_idx = splits.split_clean_noisy(
        src.train_labels, src.num_classes, clean_fraction, seed
    )
    true_noisy = src.train_labels[noisy_idx]
    noisy_label = noise.corrupt_labels(true_noisy, transition, seed)
    report = noise.noise_report(true_noisy, noisy_label, src.num_classes, noise_rate)
    report.update(kind=noise_kind, includes_true_class=bool(includes_true_class))
    return NoisyLabelData(
        images=src.train_images,
        clean_index=clean_idx,
        clean_label=src.train_labels[clean_idx].astype(np.int32),
        noisy_index=noisy_idx,
        noisy_label=noisy_label.astype(np.int32),
        noisy_true_label=true_noisy.astype(np.int32),
        test_images=src.test_images,
        test_labels=src.test_labels.astype(np.int32),
        mean=src.mean,
        std=src.std,
        num_classes=src.num_classes,
        noise=report,
    )


def check_batch_size(batch_size: int, num_examples: int, field: str) -> None:
    """ConfigError unless `field` is a positive int no larger than the set it draws from."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise errors.allowed(field, batch_size, f"an integer in [1, {num_examples}]")
    if not 0 < batch_size <= num_examples:
        raise errors.allowed(field, batch_size, f"an integer in [1, {num_examples}] (set size)")


def epoch_batches(
    key: jax.Array, epoch, num_examples: int, batch_size: int, *, field: str = "data.batch_size"
) -> jax.Array:
    """int32 [num_examples // batch_size, batch_size]: one shuffled pass, remainder dropped."""
    check_batch_size(batch_size, num_examples, field)
    steps = num_examples // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return perm[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


def stream_batch(
    key: jax.Array,
    step,
    num_examples: int,
    batch_size: int,
    *,
    field: str = "data.clean_batch_size",
) -> jax.Array:
    """int32 [batch_size]: batch number `step` of a stream reshuffled every pass over the set."""
    check_batch_size(batch_size, num_examples, field)
    steps_per_pass = num_examples // batch_size
    rows = epoch_batches(key, step // steps_per_pass, num_examples, batch_size, field=field)
    return rows[step % steps_per_pass]


def gather_batch(data: NoisyLabelData, which: str, idx) -> dict:
    """Host-side batch of positions `idx` in D' ("noisy") or D ("clean"); images stay uint8."""
    idx = np.asarray(idx)
    if which == "noisy":
        return {
            "image": data.images[data.noisy_index[idx]],
            "label": data.noisy_label[idx],
            "true_label": data.noisy_true_label[idx],
            "index": idx.astype(np.int32),
        }
    if which == "clean":
        return {"image": data.images[data.clean_index[idx]], "label": data.clean_label[idx]}
    raise errors.allowed("which", which, SETS)


def _set_size(data: NoisyLabelData, which: str) -> int:
    """Number of examples in the named set."""
    if which not in SETS:
        raise errors.allowed("which", which, SETS)
    return data.num_noisy if which == "noisy" else data.num_clean


def _index_stream(
    key: jax.Array, num_examples: int, batch_size: int, start_step: int, field: str
) -> Iterator[np.ndarray]:
    """Rows of epoch_batches pass after pass, from global step `start_step` on (checks eagerly)."""
    check_batch_size(batch_size, num_examples, field)
    if isinstance(start_step, bool) or not isinstance(start_step, int | np.integer):
        raise errors.allowed("start_step", start_step, "an integer >= 0")
    if start_step < 0:
        raise errors.allowed("start_step", start_step, "an integer >= 0")
    steps_per_pass = num_examples // batch_size

    def rows_from(epoch: int, pos: int) -> Iterator[np.ndarray]:
        while True:
            # One device call per pass, not per step.
            rows = np.asarray(epoch_batches(key, epoch, num_examples, batch_size, field=field))
            yield from rows[pos:]
            epoch, pos = epoch + 1, 0

    return rows_from(*divmod(int(start_step), steps_per_pass))


def _stream(data, which, key, batch_size, start_step) -> Iterator[dict]:
    """Endless gathered batches of one set, in the order of epoch_batches / stream_batch."""
    indices = _index_stream(
        key, _set_size(data, which), batch_size, start_step, _BATCH_FIELDS[which]
    )
    return (gather_batch(data, which, idx) for idx in indices)


def noisy_stream(
    data: NoisyLabelData, key: jax.Array, batch_size: int, start_step: int = 0
) -> Iterator[dict]:
    """Endless noisy batches, reshuffled each epoch (drop remainder); resumable at `start_step`."""
    return _stream(data, "noisy", key, batch_size, start_step)


def clean_stream(
    data: NoisyLabelData, key: jax.Array, batch_size: int, start_step: int = 0
) -> Iterator[dict]:
    """Endless clean batches, = stream_batch(key, step, ...) for step = start_step, ..."""
    return _stream(data, "clean", key, batch_size, start_step)


def tf_dataset(
    data: NoisyLabelData,
    key: jax.Array,
    batch_size: int,
    which: str,
    start_step: int = 0,
    num_steps: int | None = None,
):
    """tf.data.Dataset of the same batches as noisy_stream / clean_stream; endless if no num_steps.

    For data that does not fit in device memory: images stay on the host and tf.data gathers
    each batch in its own threads, overlapping the device step through prefetch.
    """
    n = _set_size(data, which)
    field = _BATCH_FIELDS[which]
    if num_steps is not None and (
        isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer) or num_steps < 0
    ):
        raise errors.allowed("num_steps", num_steps, "None or an integer >= 0")
    _index_stream(key, n, batch_size, start_step, field)  # Raise bad input here, not in tf.data.
    tf = sources.import_tensorflow()  # Lazy: importing the package must stay fast.

    def generate():
        # A fresh index stream per iteration of the dataset, so re-iterating starts over.
        return itertools.islice(_index_stream(key, n, batch_size, start_step, field), num_steps)

    ds = tf.data.Dataset.from_generator(
        generate, output_signature=tf.TensorSpec([batch_size], tf.int32)
    )
    images = tf.constant(data.images)
    if which == "noisy":
        rows = tf.constant(data.noisy_index)
        label, true_label = tf.constant(data.noisy_label), tf.constant(data.noisy_true_label)

        def gather(idx):
            return {
                "image": tf.gather(images, tf.gather(rows, idx)),
                "label": tf.gather(label, idx),
                "true_label": tf.gather(true_label, idx),
                "index": idx,
            }
    else:
        rows, label = tf.constant(data.clean_index), tf.constant(data.clean_label)

        def gather(idx):
            return {
                "image": tf.gather(images, tf.gather(rows, idx)),
                "label": tf.gather(label, idx),
            }

    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
