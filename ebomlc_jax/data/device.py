"""Training batches built on the device: gather by index, normalise, augment.

The arrays are split in two: `shared` (the uint8 training images and the normalisation, the same
for every seed) and `per_seed` (the clean/noisy partition and labels, one per seed), so several
seeds can be vmapped over `per_seed` while the images are stored once. The host paths (NumPy
gather, tf.data) hand raw uint8 batches to the same `finish_batch`, so every path gives the same
floating-point batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ebomlc_jax import parallel
from ebomlc_jax.data.augment import augment
from ebomlc_jax.data.pipeline import NoisyLabelData, epoch_batches, stream_batch
from ebomlc_jax.data.sources import normalize

Arrays = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """Static batch geometry and augmentation switches."""

    num_noisy: int
    num_clean: int
    batch_size: int
    clean_batch_size: int
    augment: bool
    augment_pad: int = 4
    max_steps_per_epoch: int = 0  # 0: a full pass over D'

    @property
    def steps_per_epoch(self) -> int:
        """Noisy batches per epoch (remainder dropped; capped by max_steps_per_epoch)."""
        full = self.num_noisy // self.batch_size
        return min(full, self.max_steps_per_epoch) if self.max_steps_per_epoch else full


def split_arrays(data: NoisyLabelData) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(shared, per_seed) host arrays of one seed's data, ready for device_put."""
    shared = {"images": data.images, "mean": data.mean, "std": data.std}
    per_seed = {
        "noisy_index": data.noisy_index.astype(np.int32),
        "noisy_label": data.noisy_label.astype(np.int32),
        "noisy_true_label": data.noisy_true_label.astype(np.int32),
        "clean_index": data.clean_index.astype(np.int32),
        "clean_label": data.clean_label.astype(np.int32),
    }
    return shared, per_seed


@dataclasses.dataclass(frozen=True)
class DeviceData:
    """A run's data on its device(s): the training images once (`shared`), each seed's partition
    and labels (`per_seed`, stacked on a leading axis when several seeds run as one program), the
    data keys of `data_keys` (likewise) and the test set."""

    shared: Arrays
    per_seed: Arrays
    keys: dict[str, jax.Array]
    test: Arrays
    num_classes: int
    num_seeds: int = 1
    seeds_mode: str = "vmap"  # parallel.SEED_MODES

    @property
    def num_noisy(self) -> int:
        """|D'|."""
        return int(self.per_seed["noisy_index"].shape[-1])

    @property
    def num_clean(self) -> int:
        """|D|."""
        return int(self.per_seed["clean_index"].shape[-1])

    def over_seeds(self, f: Callable, in_axes: tuple[int | None, ...]) -> Callable:
        """`f` over the seed axis (vmap or map) when several seeds run together, else `f`."""
        if self.num_seeds == 1:
            return f
        return parallel.over_seeds(f, in_axes, self.seeds_mode)


def place_data(
    datas: Sequence[NoisyLabelData],
    seeds: Sequence[int],
    put: Callable = jax.device_put,
    seeds_mode: str = "vmap",
) -> DeviceData:
    """The data of one or several seeds (same dataset) on the device, placed by `put`."""
    host_shared, _ = split_arrays(datas[0])
    per_seed = [split_arrays(d)[1] for d in datas]
    keys = [data_keys(s) for s in seeds]
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    one = (lambda xs: xs[0]) if len(seeds) == 1 else stack
    test = {"images": datas[0].test_images, "labels": datas[0].test_labels}
    return DeviceData(
        shared=put(host_shared),
        per_seed=put(one(per_seed)),
        keys=put(one(keys)),
        test=put(test),
        num_classes=datas[0].num_classes,
        num_seeds=len(seeds),
        seeds_mode=seeds_mode,
    )


def data_keys(seed: int) -> dict[str, jax.Array]:
    """The run's independent random streams: init, noisy order, clean order, augmentation."""
    init, noisy, clean, aug = jax.random.split(jax.random.key(seed), 4)
    return {"init": init, "noisy": noisy, "clean": clean, "augment": aug}


def finish_batch(raw: Arrays, shared: Arrays, key: jax.Array, spec: BatchSpec) -> Arrays:
    """uint8 images -> normalised float32 (augmented when `spec.augment`); labels unchanged."""
    images = normalize(raw["image"], shared["mean"], shared["std"])
    if spec.augment:
        images = augment(key, images, spec.augment_pad)
    return {**raw, "image": images}


def batch_keys(keys: dict[str, jax.Array], step) -> tuple[jax.Array, jax.Array]:
    """Augmentation keys of the noisy and the clean batch at global step `step`."""
    k = jax.random.fold_in(keys["augment"], step)
    return jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)


def gather_noisy(shared: Arrays, per_seed: Arrays, rows: jax.Array) -> Arrays:
    """Raw noisy batch of positions `rows` in D' (on device); "index" holds the positions."""
    return {
        "image": jnp.take(shared["images"], per_seed["noisy_index"][rows], axis=0),
        "label": per_seed["noisy_label"][rows],
        "true_label": per_seed["noisy_true_label"][rows],
        "index": rows.astype(jnp.int32),
    }


def gather_clean(shared: Arrays, per_seed: Arrays, rows: jax.Array) -> Arrays:
    """Raw clean batch of positions `rows` in D (on device)."""
    return {
        "image": jnp.take(shared["images"], per_seed["clean_index"][rows], axis=0),
        "label": per_seed["clean_label"][rows],
    }


def train_batches(
    shared: Arrays,
    per_seed: Arrays,
    keys: dict[str, jax.Array],
    step,
    noisy_rows: jax.Array,
    spec: BatchSpec,
) -> tuple[Arrays, Arrays]:
    """(noisy, clean) float batches at global step `step`; `noisy_rows` from `epoch_batches`."""
    clean_rows = stream_batch(keys["clean"], step, spec.num_clean, spec.clean_batch_size)
    noisy_key, clean_key = batch_keys(keys, step)
    noisy = finish_batch(gather_noisy(shared, per_seed, noisy_rows), shared, noisy_key, spec)
    clean = finish_batch(gather_clean(shared, per_seed, clean_rows), shared, clean_key, spec)
    return noisy, clean


def noisy_epoch_rows(keys: dict[str, jax.Array], epoch, spec: BatchSpec) -> jax.Array:
    """int32 [steps_per_epoch, batch_size]: the noisy batches of training epoch `epoch`.

    The noisy stream is continuous over passes through D' (what `noisy_stream` yields from
    step 0); a training epoch is the next `steps_per_epoch` batches of it, which is one full
    pass unless `max_steps_per_epoch` caps it.
    """
    full = spec.num_noisy // spec.batch_size
    if not spec.max_steps_per_epoch:
        return epoch_batches(keys["noisy"], epoch, spec.num_noisy, spec.batch_size)
    first = epoch * spec.steps_per_epoch
    start = first // full
    two = jnp.concatenate(
        [
            epoch_batches(keys["noisy"], p, spec.num_noisy, spec.batch_size)
            for p in (start, start + 1)
        ]
    )
    return jax.lax.dynamic_slice_in_dim(two, first - start * full, spec.steps_per_epoch)
