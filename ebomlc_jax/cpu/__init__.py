"""The CPU backend: XLA:CPU workarounds for the models (`xla`) and process preparation (here).

Entry points (run.py, the benchmarks) call `prepare_process()` once, first; library code on a
CPU calls `prepare()` once before JAX's first computation and builds its ResNet with the fields it
returns. GPU and TPU users call neither. The models never import this package: the run path
passes `resnet_fields()` to them.

This file imports no JAX, so that an entry point restarts (below) before JAX loads.

Huge pages: XLA:CPU's Eigen convolutions allocate a packed copy of their input on each call
(118 MB for a ResNet-32 3x3 layer over 200 32x32 images, 59 MB in the second stage). glibc
gives the thread-pool threads allocations that large as a fresh mmap and unmaps it when it is
freed, so every call faults its pages in again, 4 KiB at a time: about a fifth of a jitted
ResNet-32 step's CPU time. With the tunable glibc.malloc.hugetlb=1 glibc asks for transparent
huge pages on such mappings (where the kernel's THP mode is `madvise`), 512 times fewer faults.
Only where memory comes from changes, never a number. glibc reads its tunables when a process
starts, so entry points restart themselves once with it set (`reexec_with_huge_pages`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

ACCELERATOR_PACKAGES = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")
HUGETLB = "glibc.malloc.hugetlb"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def prepare_process(cpu_flags: bool = True) -> None:
    """For entry points, before anything else: restart with huge pages, then set the XLA:CPU
    flags (unless `cpu_flags` is False: a benchmark's 'before' measurement)."""
    reexec_with_huge_pages()
    if cpu_flags:
        set_cpu_flags()


def prepare() -> dict[str, Any]:
    """For library code on a CPU, before JAX's first computation: set the XLA:CPU flags and
    return the ResNet fields that make it fast there (`models.resnet32(10, **cpu.prepare())`)."""
    set_cpu_flags()
    return resnet_fields()


def resnet_fields() -> dict[str, Any]:
    """`conv` and `block_output` for `models.CifarResNet`: XLA:CPU's fast paths on a CPU, lax's
    convolution and the identity elsewhere (chosen per platform when a program is lowered)."""
    from ebomlc_jax.cpu import xla

    return {"conv": xla.Conv, "block_output": xla.materialize}


def set_cpu_flags() -> bool:
    """Add the XLA:CPU flags to `XLA_FLAGS` before JAX starts; True if they now apply."""
    from ebomlc_jax.cpu import xla

    return xla.set_cpu_flags()


@functools.cache  # scanning every installed package takes ~40 ms; asked twice per process
def accelerator_plugins() -> tuple[str, ...]:
    """Installed JAX GPU/TPU plugin packages (jax-cuda12-plugin, libtpu, ...)."""
    names = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
    return tuple(sorted({n for n in names if n.lower().startswith(ACCELERATOR_PACKAGES)}))


def thp_mode(path: str = THP_ENABLED) -> str | None:
    """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'); None if unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library if it is glibc, else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, TypeError, ValueError):
        return None


def huge_page_tunables(
    environ: Mapping[str, str],
    thp: str | None,
    glibc: tuple[int, int] | None,
    plugins: Sequence[str],
) -> str | None:
    """The GLIBC_TUNABLES value to restart with, or None to leave the process as it is.

    None when GLIBC_TUNABLES already sets glibc.malloc.hugetlb (the user's value wins, and a
    restarted process stops here), when THP is not in `madvise` mode ('always' needs no advice,
    'never' gives none), on glibc older than 2.35 (no such tunable) or another C library, and
    when a GPU/TPU plugin is installed (the host's allocations are not the bottleneck there).
    """
    current = environ.get("GLIBC_TUNABLES", "")
    given = {item.split("=", 1)[0] for item in current.split(":") if item}
    if HUGETLB in given or thp != "madvise" or glibc is None or glibc < (2, 35) or plugins:
        return None
    return ":".join(filter(None, [current, f"{HUGETLB}=1"]))


def reexec_with_huge_pages() -> None:
    """Restart this Python process with glibc.malloc.hugetlb=1 when `huge_page_tunables` says so.

    For entry points only: the process image is replaced (same PID, same arguments), so call it
    before anything worth keeping has happened.
    """
    value = huge_page_tunables(os.environ, thp_mode(), glibc_version(), accelerator_plugins())
    if value is None:
        return
    logging.info("restarting with GLIBC_TUNABLES=%s (transparent huge pages for malloc)", value)
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, "GLIBC_TUNABLES": value}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
