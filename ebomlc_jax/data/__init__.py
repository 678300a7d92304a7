"""Data: sources (tfds CIFAR-10/100, offline digits), noise models, splits, augmentation, batches.

Nothing here imports tensorflow or tensorflow_datasets at import time; the functions that need
them import them when called.
"""

from ebomlc_jax.data.augment import augment
from ebomlc_jax.data.noise import (
    NOISE_KINDS,
    corrupt_labels,
    flip_map,
    noise_report,
    transition_matrix,
)
from ebomlc_jax.data.pipeline import (
    NoisyLabelData,
    build_data,
    clean_stream,
    epoch_batches,
    gather_batch,
    noisy_stream,
    stream_batch,
    tf_dataset,
)
from ebomlc_jax.data.sources import (
    CIFAR_MEAN,
    CIFAR_STD,
    DATASETS,
    DatasetUnavailableError,
    Source,
    load_source,
    normalize,
)
from ebomlc_jax.data.splits import split_clean_noisy

# Where training batches are gathered: on the device (the whole training set there), by NumPy on
# the host, or by tf.data on the host (for data too large for device memory).
INPUTS = ("device", "host", "tf_data")

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "INPUTS",
    "NOISE_KINDS",
    "DatasetUnavailableError",
    "NoisyLabelData",
    "Source",
    "augment",
    "build_data",
    "clean_stream",
    "corrupt_labels",
    "epoch_batches",
    "flip_map",
    "gather_batch",
    "load_source",
    "noise_report",
    "noisy_stream",
    "normalize",
    "split_clean_noisy",
    "stream_batch",
    "tf_dataset",
    "transition_matrix",
]
