"""Raw datasets as uint8 NumPy arrays: CIFAR-10/100 through tensorflow-datasets, offline digits."""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from ebomlc_jax import errors

# MW-Net / MLC / EBOMLC normalisation constants, in units of image / 255.
CIFAR_MEAN = (np.array([125.3, 123.0, 113.9]) / 255).astype(np.float32)
CIFAR_STD = (np.array([63.0, 62.1, 66.7]) / 255).astype(np.float32)

DATASETS = ("cifar10", "cifar100", "digits")

_TFDS_ARCHIVES = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}
_TFDS_VERSION = "3.0.2"
# Examples per tf.data batch when reading a split into memory. `batch_size=-1` in tfds.load
# would be one batch, but it sizes that batch from the dataset info, which is empty under
# `tfds.testing.mock_data` (it then asks for sys.maxsize rows and aborts the process).
_READ_CHUNK = 10_000
_DIGITS_TEST_FRACTION = 0.2


class DatasetUnavailableError(errors.ConfigError):
    """The dataset is not prepared on disk and cannot be downloaded; the message says what to do."""


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """A labelled train/test pair of uint8 images with the per-channel normalisation constants."""

    name: str
    train_images: np.ndarray  # uint8 [N, H, W, C]
    train_labels: np.ndarray  # int32 [N]
    test_images: np.ndarray  # uint8 [N_test, H, W, C]
    test_labels: np.ndarray  # int32 [N_test]
    num_classes: int
    mean: np.ndarray  # float32 [C], in units of image / 255
    std: np.ndarray  # float32 [C], in units of image / 255


def normalize(images, mean, std):
    """uint8 images -> float32 (images / 255 - mean) / std, in NumPy or JAX as given."""
    xp = np if isinstance(images, np.ndarray) else jnp
    mean = xp.asarray(mean, dtype=xp.float32)
    std = xp.asarray(std, dtype=xp.float32)
    return (xp.asarray(images).astype(xp.float32) / 255.0 - mean) / std


def import_tensorflow():
    """TensorFlow, for tfds and tf.data only: quiet, and kept off the GPUs (JAX has them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before its C++ library loads
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already started its devices (set by whoever started it)
        pass
    return tf


def load_source(name: str, data_dir: str | None = None, download: bool = False) -> Source:
    """Loads `name` (one of DATASETS) fully into host memory."""
    if name not in DATASETS:
        raise errors.allowed("data.dataset", name, DATASETS)
    if name == "digits":
        return _load_digits()
    return _load_tfds(name, data_dir, download)


def _load_tfds(name: str, data_dir: str | None, download: bool) -> Source:
    """CIFAR through tensorflow-datasets; a missing dataset becomes a DatasetUnavailableError."""
    import_tensorflow()
    import tensorflow_datasets as tfds  # Lazy: importing the package must stay fast.
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    splits = {}
    for split in ("train", "test"):
        try:
            ds = tfds.load(name, split=split, data_dir=data_dir, download=download)
        except (
            AssertionError,  # Not prepared and download=False.
            tfds.core.DatasetNotFoundError,
            NonMatchingChecksumError,  # A wrong file in the manual dir.
            OSError,  # A failed download (no internet): requests' errors derive from it.
        ) as e:
            raise DatasetUnavailableError(_unavailable_message(name, data_dir, download, e)) from e
        images, labels = [], []
        for chunk in tfds.as_numpy(ds.batch(_READ_CHUNK)):
            images.append(chunk["image"])
            labels.append(chunk["label"])
        splits[split] = (
            np.concatenate(images).astype(np.uint8),
            np.concatenate(labels).astype(np.int32),
        )
    return Source(
        name=name,
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        test_images=splits["test"][0],
        test_labels=splits["test"][1],
        num_classes=10 if name == "cifar10" else 100,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )


def _unavailable_message(name: str, data_dir: str | None, download: bool, cause) -> str:
    """What to do when tfds has no prepared copy of `name` in `data_dir`."""
    if data_dir is None:
        import tensorflow_datasets as tfds

        data_dir = tfds.core.constants.DATA_DIR  # ~/tensorflow_datasets unless $TFDS_DATA_DIR.
    data_dir = os.path.expanduser(str(data_dir))
    manual = os.path.join(data_dir, "downloads", "manual")
    prepared = os.path.join(data_dir, name, _TFDS_VERSION)
    return (
        f"data.dataset={name!r}: no prepared tensorflow-datasets copy in {data_dir} "
        f"(download={download}; tfds said: {type(cause).__name__}: {cause}). To fix, do one of:\n"
        f"  1. put {_TFDS_ARCHIVES[name]} in {manual}/ and run once with "
        f"--config.data.download=True (tfds then prepares it from that file, checksum-checked, "
        f"without internet);\n"
        f"  2. copy a prepared tfds folder to {prepared}/ and keep download=False;\n"
        f"  3. pass --config.data.download=True on a machine with internet "
        f"(and --config.data.data_dir={data_dir} to put it here)."
    )


def _load_digits() -> Source:
    """scikit-learn's bundled 8x8 digits with a fixed stratified 80/20 train/test split."""
    from sklearn.datasets import load_digits  # Lazy: sklearn is slow to import.

    digits = load_digits()
    # Values are 0..16; scale to 0..255 so the same /255 normalisation as CIFAR applies.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    # The split is fixed (RandomState(0)), independent of any run seed, so test sets agree.
    rs = np.random.RandomState(0)
    test = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test.append(idx[rs.permutation(len(idx))[: round(_DIGITS_TEST_FRACTION * len(idx))]])
    is_test = np.zeros(len(labels), bool)
    is_test[np.concatenate(test)] = True
    train_images = images[~is_test]
    scaled = train_images.astype(np.float64) / 255.0
    return Source(
        name="digits",
        train_images=train_images,
        train_labels=labels[~is_test],
        test_images=images[is_test],
        test_labels=labels[is_test],
        num_classes=10,
        mean=scaled.mean(axis=(0, 1, 2)).astype(np.float32),
        std=scaled.std(axis=(0, 1, 2)).astype(np.float32),
    )
