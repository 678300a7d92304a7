"""Shared benchmark helpers: CIFAR-shaped synthetic data, method construction, timing, machine."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np
import optax

from ebomlc_jax import cpu, methods, models
from ebomlc_jax.data import noise, splits
from ebomlc_jax.data.pipeline import NoisyLabelData
from ebomlc_jax.data.sources import CIFAR_MEAN, CIFAR_STD

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def synthetic_cifar(
    num_classes: int, seed: int = 0, n_train: int = 50_000, n_test: int = 10_000
) -> NoisyLabelData:
    """CIFAR-shaped random images with the real split and noise code (40% uniform noise).

    For timing only: no accuracy means anything on it.
    """
    rs = np.random.RandomState(1234)
    labels = np.repeat(np.arange(num_classes), n_train // num_classes).astype(np.int32)
    images = rs.randint(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    clean, noisy = splits.split_clean_noisy(labels, num_classes, 0.02, seed)
    transition = noise.transition_matrix("uniform", 0.4, num_classes)
    noisy_label = noise.corrupt_labels(labels[noisy], transition, seed)
    return NoisyLabelData(
        images=images,
        clean_index=clean,
        clean_label=labels[clean],
        noisy_index=noisy,
        noisy_label=noisy_label,
        noisy_true_label=labels[noisy],
        test_images=rs.randint(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        test_labels=rs.randint(0, num_classes, n_test).astype(np.int32),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        num_classes=num_classes,
        noise=noise.noise_report(labels[noisy], noisy_label, num_classes, 0.4),
    )


# name, method kwargs (the paper's hyperparameters; reference = the released step, which takes
# its CIFAR-100 branch for every dataset but CIFAR-10)
METHODS = {
    "ce": ("ce", {}),
    "ebomlc-paper": ("ebomlc", {"variant": "paper"}),
    "ebomlc-paper-noisy-G": ("ebomlc", {"variant": "paper", "clean_in_lower_loss": False}),
    "ebomlc-paper-joint": ("ebomlc", {"variant": "paper", "joint_lower_pass": True}),
    "ebomlc-reference": ("ebomlc", {"variant": "reference", "q_as_optimizer_delta": "K != 10"}),
    "mlc": ("mlc", {}),
    "mlc_d": ("mlc_d", {"k": 5, "delta": 0.5}),
    "glc": ("glc", {}),  # phase 1: CE on the noisy batch
    "glc-phase2": ("glc", {}),  # phase 2: forward correction + the clean batch, two passes
    "l2rw": ("l2rw", {}),
    "mwnet": ("mwnet", {}),
    "pmwnet": ("pmwnet", {}),
    "coteaching_plus": ("coteaching_plus", {"forget_rate": 0.4}),  # the data's 40% noise
    "dividemix": ("dividemix", {}),  # after warm-up: MixMatch on both networks
}
# Where a method's timed steps start, when its step depends on the phase of training.
START_STEP = {
    "glc-phase2": lambda m: m.boundary,
    "dividemix": lambda m: m.warmup_epochs * m.steps_per_epoch,
}


def make_method(
    key: str,
    num_classes: int,
    steps_per_epoch: int = 490,
    dtype=None,
    epochs: int = 120,
    depth: int = 32,
) -> methods.Method:
    """ResNet-32 (or another `depth` of it) + meta model with the paper's optimisers for one of
    METHODS, for CIFAR's shape (|D'| = 49,000, augmentation padding 4)."""
    name, kw = METHODS[key]
    kw = {k: num_classes != 10 if v == "K != 10" else v for k, v in kw.items()}
    schedule = optax.piecewise_constant_schedule(
        0.1, {steps_per_epoch * epochs * 2 // 3: 0.1, steps_per_epoch * epochs * 5 // 6: 0.1}
    )
    return methods.create(
        name,
        main_model=models.resnet32(
            num_classes, **({"dtype": dtype} if dtype else {}), **cpu.resnet_fields()
        ).clone(blocks_per_stage=(depth - 2) // 6),
        meta_model=models.MetaNet(num_classes) if methods.get(name).uses_meta else None,
        lr_schedule=schedule,
        num_noisy=steps_per_epoch * 100,
        steps_per_epoch=steps_per_epoch,
        num_epochs=epochs,
        augment_pad=4,
        **kw,
    )


def start_step(key: str, method: methods.Method) -> int:
    """The step counter a timed state starts from (0 unless the method's phase needs another)."""
    return START_STEP[key](method) if key in START_STEP else 0


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn()` (which must block until its work is done)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def summarise_times(times: list[float]) -> dict:
    """Median, min and interquartile range of some timings, in seconds."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "min_s": min(times), "iqr_s": q[2] - q[0]}


def round_order(count: int, round_index: int) -> list[int]:
    """Indices of `count` things timed in turn: in order on even rounds, reversed on odd ones."""
    order = list(range(count))
    return order if round_index % 2 == 0 else order[::-1]


def ratio_by_round(per_round: list[float], reference: list[float]) -> tuple[float, list[float]]:
    """Median over rounds of each round's ratio to the reference's same round, and the ratios."""
    ratios = [a / b for a, b in zip(per_round, reference, strict=True)]
    return statistics.median(ratios), ratios


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict:
    """Where a number was measured."""
    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": dev.device_kind,
        "num_devices": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),  # huge pages: ebomlc_jax/cpu
    }


def peak_memory_bytes() -> int:
    """Peak device memory on an accelerator, else the process's peak resident set."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write(name: str, record: dict) -> pathlib.Path:
    """benchmarks/results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")
    return path
