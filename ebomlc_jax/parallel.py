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


def choose_device_count(
    requested: int, available: int, batch_size: int, clean_batch_size: int, clean_parts: int
) -> tuple[int, str | None]:
    """(devices to use, a warning or None). The batches must split evenly over the devices (and so
    must each of the clean batch's `clean_parts` parts, which the methods take apart).

    `requested` 0 means "all": then the largest count up to `available` that divides the batches,
    with a one-line warning when that is fewer than all (so the paper's batches of 100 with clean
    halves of 50 run on 2 of 4 devices or 5 of 8, with the numbers of one device). A count asked for
    explicitly must be available and divide them: ConfigError otherwise.
    """

    def divides(n: int) -> bool:
        sizes = (batch_size, clean_batch_size, clean_batch_size // clean_parts)
        return all(size % n == 0 for size in sizes)

    need = f"data.batch_size={batch_size}, data.clean_batch_size={clean_batch_size}" + (
        f" and its {clean_parts} parts of {clean_batch_size // clean_parts}"
        if clean_parts > 1
        else ""
    )
    if requested:
        if requested > available or not divides(requested):
            fits = [n for n in range(1, available + 1) if divides(n)]
            raise ConfigError(
                f"parallel.num_devices={requested} is not allowed; allowed values: 0 (all that "
                f"fit) or one of {fits} ({available} devices available; {need} must divide "
                "over them)"
            )
        return requested, None
    count = max(n for n in range(1, available + 1) if divides(n))
    if count == available:
        return count, None
    return count, (
        f"using {count} of {available} devices: {need} split evenly over {count} "
        f"(pass --config.parallel.num_devices={count} to say so, or batch sizes that divide "
        f"by {available} to use them all)"
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


def clean_for_pmap(clean: PyTree, num_devices: int, parts: int) -> PyTree:
    """Shard a clean batch so that each device's local parts are slices of the global parts.

    A method may split the clean batch it sees into equal parts (e.g. halves for the upper and
    the lower loss); under pmap each device must hold its share of the global first part, then
    of the second, ..., or the losses would see other examples than on one device.
    """

    def arrange(x):
        shares = (h.reshape(num_devices, -1, *h.shape[1:]) for h in jnp.split(x, parts))
        return jnp.concatenate(list(shares), axis=1)

    return pmap_put(jax.tree.map(arrange, clean), num_devices)


def replicate_for_pmap(tree: PyTree, num_devices: int) -> PyTree:
    """Stack `num_devices` copies on a new leading axis, one per device."""
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_devices, *x.shape)), tree)
    return pmap_put(stacked, num_devices)


def unreplicate(tree: PyTree) -> PyTree:
    """The first device's copy of a pmap-replicated tree, as a single-device array."""
    return jax.tree.map(lambda x: jax.device_put(x[0], jax.devices()[0]), tree)
