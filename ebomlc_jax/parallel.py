"""Data parallelism: one `jax.jit` over a 1-axis device mesh (default) or `jax.pmap` on request.

jit mode: the state is replicated (`P()`), batches are sharded along the batch axis
(`P("data")`), and the compiler inserts the all-reduces; BatchNorm statistics, the barrier
coefficient and every loss are global-batch quantities, so N devices compute what one does.
pmap mode: the method is built with `axis_name="data"` (BN over the axis, gradients averaged by
`methods.common.reduce_grad`, global-batch dropout masks) and the step is `jax.pmap`-ed.

Multi-host (TPU pods, multi-node GPU): set `parallel.distributed=True` so that
`jax.distributed.initialize()` runs first (arguments from the environment on TPU and SLURM,
or `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` elsewhere); the mesh then
spans every process's devices and each process must run the same program on the same data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ebomlc_jax.errors import ConfigError

MODES = ("jit", "pmap")
SEED_MODES = ("vmap", "map")
DATA_AXIS = "data"
PyTree = Any


def over_seeds(f: Callable, in_axes: tuple[int | None, ...], how: str) -> Callable:
    """`f` over a leading seed axis of the arguments whose in_axes entry is 0 (others shared).

    "vmap" batches the seeds into one program; "map" runs them one after another inside the
    same compiled program (`lax.map`), for backends where batched-weight convolutions are slow.
    Both return the seed axis first.
    """
    if how == "vmap":
        return jax.vmap(f, in_axes=in_axes)

    def mapped(*args):
        def one(seed_args):
            it = iter(seed_args)
            return f(*(next(it) if ax == 0 else a for a, ax in zip(args, in_axes, strict=True)))

        return jax.lax.map(one, tuple(a for a, ax in zip(args, in_axes, strict=True) if ax == 0))

    return mapped


def initialize(distributed: bool) -> None:
    """Start multi-host JAX when asked (must precede any other JAX call)."""
    if distributed:
        jax.distributed.initialize()


def device_count(requested: int | None) -> int:
    """Number of devices to use: all of them for None, else `requested` (checked)."""
    available = jax.device_count()
    if requested is None:
        return available
    if not 1 <= requested <= available:
        raise ConfigError(
            f"parallel.num_devices={requested!r} is not allowed; allowed values: None or an "
            f"integer in [1, {available}] (devices available: {available})"
        )
    return requested


def make_mesh(num_devices: int) -> Mesh:
    """A 1-axis mesh named "data" over the first `num_devices` devices."""
    return Mesh(np.asarray(jax.devices()[:num_devices]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over the devices."""
    return NamedSharding(mesh, P(DATA_AXIS))


def constrain_batch(tree: PyTree, mesh: Mesh | None) -> PyTree:
    """Inside jit: lay a batch out sharded along its leading axis."""
    if mesh is None or mesh.size == 1:
        return tree
    return jax.lax.with_sharding_constraint(tree, batch_sharded(mesh))


def check_divisible(batch_size: int, clean_batch_size: int, halves: bool, num_devices: int):
    """Batches must split evenly over the devices (pmap also splits the clean halves)."""
    for field, size in (
        ("data.batch_size", batch_size),
        ("data.clean_batch_size", clean_batch_size),
    ):
        if size % num_devices:
            raise ConfigError(
                f"{field}={size} is not allowed with {num_devices} devices; allowed values: "
                f"multiples of {num_devices}"
            )
    if halves and (clean_batch_size // 2) % num_devices:
        raise ConfigError(
            f"data.clean_batch_size={clean_batch_size} is not allowed with {num_devices} devices "
            f"and data.clean_in_lower_loss=True; allowed values: multiples of {2 * num_devices}"
        )


# ----------------------------------------------------------------------------- pmap helpers
def pmap_put(tree: PyTree, num_devices: int) -> PyTree:
    """Place [devices, ...] arrays one slice per device, as `jax.pmap` expects its inputs."""
    return jax.device_put(tree, batch_sharded(make_mesh(num_devices)))


def shard_for_pmap(batch: PyTree, num_devices: int) -> PyTree:
    """[B, ...] -> [devices, B / devices, ...], one slice per device."""
    return pmap_put(
        jax.tree.map(lambda x: x.reshape(num_devices, -1, *x.shape[1:]), batch), num_devices
    )


def clean_for_pmap(clean: PyTree, num_devices: int, halves: bool) -> PyTree:
    """Shard a clean batch so that each device's local halves are slices of the global halves.

    The methods split the clean batch they see into halves (upper loss / lower loss); under
    pmap each device must hold its part of the global first half followed by its part of the
    global second half, or the two losses would see different examples than on one device.
    """
    if not halves:
        return shard_for_pmap(clean, num_devices)

    def arrange(x):
        first, second = (h.reshape(num_devices, -1, *h.shape[1:]) for h in jnp.split(x, 2))
        return jnp.concatenate([first, second], axis=1)

    return pmap_put(jax.tree.map(arrange, clean), num_devices)


def replicate_for_pmap(tree: PyTree, num_devices: int) -> PyTree:
    """Stack `num_devices` copies on a new leading axis, one per device."""
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_devices, *x.shape)), tree)
    return pmap_put(stacked, num_devices)


def unreplicate(tree: PyTree) -> PyTree:
    """The first device's copy of a pmap-replicated tree, as a single-device array."""
    return jax.tree.map(lambda x: jax.device_put(x[0], jax.devices()[0]), tree)
